//! Hot standby (#16) in network namespaces the test makes: two gateway namespaces (gwA
//! active, gwB its standby), a caller, a callee and Redis on one bridge, the VIP moved by
//! Debian's keepalived (VRRP unicast, adverts every 0.1 s). Needs root, `ip`, keepalived
//! and redis-server: plain `cargo test --workspace` skips it saying why; `.ci/run`'s
//! failover stage installs them and runs it with `--test-threads=1 --nocapture`.
//!
//! Cases: keepalived alone (the VIP move, the floor under every figure); a live SRTP call
//! (50 packets/s each way, `sbc-failover-peer` in the caller and callee namespaces) across
//! gwA's death with the re-INVITE (CSeq continuing) and the BYE through gwB, hung up by
//! either side; every SRTP suite; the early dialog (gwA dies while ringing); a sequence
//! wrap before the failover; Redis restarted empty before the failover; a clear-RTP
//! recording tap started on gwA going on from gwB (`sbc-failover-peer tap-sink` counts the
//! copies); split brain (both nodes hold the VIP; the epoch leaves one owner). Each prints a `FAILOVER_RESULT` line
//! (`benches/cluster_failover/run.sh` collects them).
//!
//! A node "dies" the way a machine does: its link goes down and every process in its
//! namespace is SIGKILLed, so nothing says goodbye (no VRRP priority-0 advert, no TCP
//! FIN) and the standby notices by silence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use sbc_testkit::netns::{self, Keepalived, Lab, VIP};

/// Issue #16: keepalived alone moved a VIP in 0.32-0.35 s here with 0.1 s adverts (3
/// adverts missed plus the skew time). Generous for a loaded CI machine.
const VIP_MOVE_BOUND: Duration = Duration::from_secs(2);

/// The cases run one at a time even under plain `cargo test` (parallel threads): each
/// measures timing, and keepalived's failover would feel the others' load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `None` (after printing why) when namespace tests cannot run here, else the guard that
/// keeps this case alone.
fn lab_or_skip() -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(why) = netns::missing() {
        println!("skipped: {why}");
        return None;
    }
    Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
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
    let Some(_alone) = lab_or_skip() else {
        return;
    };
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

// ---------- a live SRTP call across a gateway failover ----------

const BIN: &str = env!("CARGO_BIN_EXE_sbc-edge");
const PEER: &str = env!("CARGO_BIN_EXE_sbc-failover-peer");
const TOKEN: &str = "ops-failover-0f1e2d3c4b5a6978";
/// The name both gateways' certificate carries and the caller verifies.
const GW_NAME: &str = "sbc.example.net";
/// The tenant's client certificate name.
const TRUNK_NAME: &str = "trunk.example";

/// The test's bound on the media gap each way (the issue's target is 500 ms; the figure
/// itself comes from benches/cluster_failover/run.sh, on a quiet machine).
const GAP_BOUND: Duration = Duration::from_secs(2);

/// Media before the failover, and after it before the in-dialog requests.
const MEDIA_BEFORE: Duration = Duration::from_secs(2);
const MEDIA_AFTER: Duration = Duration::from_secs(2);

/// Where the lab's files go, and the PKI of the run.
struct Setup {
    dir: std::path::PathBuf,
    lab: Lab,
    gw: sbc_testkit::Leaf,
    gw_ca: sbc_testkit::Ca,
    callee_ca: sbc_testkit::Ca,
    client_ca: sbc_testkit::Ca,
    /// Appended to both gateways' `[cluster.standby]`.
    standby_extra: &'static str,
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let dir = sbc_testkit::files::temp_dir(tag);
        let lab = Lab::new(&[
            ("gwA", 1),
            ("gwB", 2),
            ("caller", 10),
            ("callee", 20),
            ("redis", 30),
        ]);
        let gw_ca = sbc_testkit::Ca::new("failover gateway CA");
        Setup {
            gw: gw_ca.issue(&[GW_NAME]),
            gw_ca,
            callee_ca: sbc_testkit::Ca::new("failover callee CA"),
            client_ca: sbc_testkit::Ca::new("failover platform CA"),
            standby_extra: "",
            dir,
            lab,
        }
    }

    fn redis_addr(&self) -> String {
        format!("{}:6379", self.lab.node("redis").ip)
    }

    /// redis-server in its namespace, no persistence.
    fn start_redis(&self) {
        let mut cmd = self.lab.command("redis", "redis-server");
        cmd.args([
            "--bind",
            &self.lab.node("redis").ip.to_string(),
            "--port",
            "6379",
        ])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(&self.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        self.lab.spawn(cmd);
        for _ in 0..200 {
            let out = self
                .lab
                .output(self.lab.command("redis", "redis-cli").args([
                    "-h",
                    &self.lab.node("redis").ip.to_string(),
                    "ping",
                ]));
            if String::from_utf8_lossy(&out.stdout).contains("PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not answer PING");
    }

    /// The same config on both nodes but for node_id and peer.
    fn gateway_config(&self, node: &str, peer: &str) -> std::path::PathBuf {
        let d = &self.dir;
        let cert = write(d, "gw.pem", &self.gw.cert_pem);
        let key = write(d, "gw.key", &self.gw.key_pem);
        let client_ca = write(d, "platform-ca.pem", &self.client_ca.pem);
        let callee_ca = write(d, "callee-ca.pem", &self.callee_ca.pem);
        let kek = write(d, "cluster.key", &format!("{}\n", "5a".repeat(32)));
        let callee = self.lab.node("callee").ip;
        let text = format!(
            "[admin]\naddress = \"127.0.0.1:9090\"\naudit_log = {audit:?}\n\
[[admin.tokens]]\nid = \"keepalived\"\nsha256 = \"{token}\"\nrole = \"operator\"\n\
[media]\naddress = \"{VIP}\"\nfreebind = true\nport_min = 30000\nport_max = 30999\n\
[[listeners]]\nname = \"public\"\naddress = \"{VIP}:5061\"\nfreebind = true\n\
advertised_host = \"{GW_NAME}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\nclient_ca = {client_ca:?}\n\
[[tenants]]\nid = \"platform\"\n[tenants.recognition]\nclient_cert_san = [\"{TRUNK_NAME}\"]\n\
[[tenants.routes]]\nprefix = \"\"\ntarget = \"sips:{callee}:5061\"\nca_file = {callee_ca:?}\n\
[cluster]\nnode_id = \"{node}\"\nredis = \"{redis}\"\nheartbeat_ms = 200\nkey_prefix = \"{prefix}\"\n\
[cluster.standby]\npeer = \"{peer}\"\nkey_file = {kek:?}\n{}",
            self.standby_extra,
            audit = d.join(format!("audit-{node}.log")),
            token = sbc_admin::token_sha256_hex(TOKEN),
            redis = self.redis_addr(),
            prefix = self.lab.id,
        );
        write(d, &format!("{node}.toml"), &text)
    }

    fn start_gateway(&self, node: &str, peer: &str) -> sbc_testkit::process::Spawned {
        let cfg = self.gateway_config(node, peer);
        let ns = self.lab.node(node).ns.clone();
        sbc_testkit::process::Spawned::with_args(
            "ip",
            &[&"netns", &"exec", &ns, &BIN, &"--config", &cfg],
            &[("RUST_LOG", "info")],
        )
    }

    /// keepalived on `node`, whose notify_master runs deploy/cluster/sbc-edge-notify.sh
    /// against the node's own gateway (its log: `notify-NODE.log`).
    fn start_keepalived(&self, node: &str, priority: u8, peer: &str) {
        use std::os::unix::fs::PermissionsExt;
        let token = write(&self.dir, "takeover.token", &format!("{TOKEN}\n"));
        let hook = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/cluster/sbc-edge-notify.sh");
        let log = self.dir.join(format!("notify-{node}.log"));
        let script = write(
            &self.dir,
            &format!("notify-{node}.sh"),
            &format!(
                "#!/bin/sh\necho \"start $(date +%s.%N)\" >> {log:?}\n\
SBC_EDGE={BIN:?} SBC_EDGE_ADMIN=http://127.0.0.1:9090 SBC_EDGE_TOKEN_FILE={token:?} \
SBC_EDGE_TAKEOVER_PAUSE=0.05 SBC_EDGE_TAKEOVER_ATTEMPTS=20 {hook:?} master >> {log:?} 2>&1\n\
echo \"done $(date +%s.%N) $?\" >> {log:?}\n"
            ),
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Keepalived {
            priority,
            advert_int: 0.1,
            peer: self.lab.node(peer).ip,
            notify_master: Some(script),
        }
        .start(&self.lab, node, &self.dir);
    }

    /// `sbc-edge cluster status --json` on `node`'s own admin plane.
    fn standby_status(&self, node: &str) -> Option<serde_json::Value> {
        let token = write(&self.dir, "takeover.token", &format!("{TOKEN}\n"));
        let out = self.lab.output(
            self.lab
                .command(node, BIN)
                .args([
                    "cluster",
                    "status",
                    "--json",
                    "--admin",
                    "http://127.0.0.1:9090",
                    "--token-file",
                ])
                .arg(&token),
        );
        serde_json::from_slice(&out.stdout).ok()
    }

    fn start_callee(&self, sc: &Scenario) -> Peer {
        let leaf = self
            .callee_ca
            .issue(&[&self.lab.node("callee").ip.to_string()]);
        let cert = write(&self.dir, "callee.pem", &leaf.cert_pem);
        let key = write(&self.dir, "callee.key", &leaf.key_pem);
        let ip = self.lab.node("callee").ip.to_string();
        let mut cmd = self.lab.command("callee", PEER);
        cmd.args([
            "callee",
            "--listen",
            &format!("{ip}:5061"),
            "--media-ip",
            &ip,
        ])
        .args(["--ring-ms", &sc.ring_ms.to_string()]);
        peer_args(&mut cmd, &cert, &key, sc);
        Peer::start(&self.lab, cmd, "callee")
    }

    fn start_caller(&self, sc: &Scenario) -> Peer {
        let leaf = self.client_ca.issue(&[TRUNK_NAME]);
        let cert = write(&self.dir, "trunk.pem", &leaf.cert_pem);
        let key = write(&self.dir, "trunk.key", &leaf.key_pem);
        let ca = write(&self.dir, "gw-ca.pem", &self.gw_ca.pem);
        let ip = self.lab.node("caller").ip.to_string();
        let mut cmd = self.lab.command("caller", PEER);
        cmd.args([
            "caller",
            "--gateway",
            &format!("{VIP}:5061"),
            "--server-name",
            GW_NAME,
        ])
        .args(["--media-ip", &ip, "--suite", sc.suite])
        .arg("--ca")
        .arg(ca);
        peer_args(&mut cmd, &cert, &key, sc);
        Peer::start(&self.lab, cmd, "caller")
    }

    /// The node dies: off the network, every process in it SIGKILLed.
    fn kill_node(&self, node: &str) {
        self.lab.unplug(node);
        self.lab.kill_all(node);
    }

    fn notify_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("notify-{node}.log"))).unwrap_or_default()
    }
}

/// The arguments both SIP peers take: certificate, key, run bound, first sequence number.
fn peer_args(cmd: &mut std::process::Command, cert: &Path, key: &Path, sc: &Scenario) {
    cmd.arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["--max-secs", "90"]);
    if let Some(seq) = sc.first_seq {
        cmd.args(["--first-seq", &seq.to_string()]);
    }
}

/// A failover peer process: commands to its stdin, its JSON lines collected.
struct Peer {
    name: &'static str,
    stdin: std::process::ChildStdin,
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Peer {
    fn start(lab: &Lab, mut cmd: std::process::Command, name: &'static str) -> Peer {
        use std::io::BufRead;
        use std::process::Stdio;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let pid = lab.spawn(cmd);
        let mut child = lab.take(pid).expect("child");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        // Back to the lab, which kills it on drop.
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&l) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        lab.adopt(child);
        Peer { name, stdin, lines }
    }

    fn send(&mut self, cmd: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{cmd}").expect("peer stdin");
    }

    /// The first line matching `pred`, waiting at most `within`.
    fn wait(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines = serde_json::Value::from(self.lines());
        panic!("{}: no {what} within {within:?}; lines: {lines}", self.name);
    }

    fn event(&self, within: Duration, event: &str) -> serde_json::Value {
        self.wait(within, event, |v| v["event"] == event)
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }
}

/// Who hangs up after the failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hangup {
    Caller,
    Callee,
}

/// Prints the standby's logs and the notify hook's when the test fails.
struct OnFailure<'a> {
    setup: &'a Setup,
    standby: &'a sbc_testkit::process::Spawned,
}

impl Drop for OnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gwB's logs:\n{}", self.standby.logs());
            eprintln!("--- gwB's notify hook:\n{}", self.setup.notify_log("gwB"));
            eprintln!("--- files in {}", self.setup.dir.display());
        }
    }
}

fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < until,
            "no {what} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn response(peer: &Peer, method: &'static str, cseq: u64) -> serde_json::Value {
    peer.wait(
        Duration::from_secs(15),
        &format!("{method} {cseq} response"),
        |v| v["event"] == "response" && v["method"] == method && v["cseq"] == cseq,
    )
}

fn request(peer: &Peer, method: &'static str) -> serde_json::Value {
    peer.wait(Duration::from_secs(15), &format!("{method} request"), |v| {
        v["event"] == "request" && v["method"] == method
    })
}

/// One failover case.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    suite: &'static str,
    hangup: Hangup,
    /// The callee rings this long before answering; above zero, gwA dies while ringing
    /// (the early dialog is what gwB takes over).
    ring_ms: u64,
    /// Redis is killed and started empty before the failover: the nodes must republish.
    redis_restart: bool,
    /// Both peers' first RTP sequence number (a wrap before the failover).
    first_seq: Option<u16>,
    /// A clear-RTP recording tap on the call (started on gwA) must go on from gwB.
    tap: bool,
}

impl Scenario {
    fn new(suite: &'static str, hangup: Hangup) -> Scenario {
        Scenario {
            suite,
            hangup,
            ring_ms: 0,
            redis_restart: false,
            first_seq: None,
            tap: false,
        }
    }
}

/// Both gateways, Redis and keepalived up, gwA holding the VIP, gwB standing by for it.
fn start_pair(s: &Setup) -> (sbc_testkit::process::Spawned, sbc_testkit::process::Spawned) {
    s.start_redis();
    let a = s.start_gateway("gwA", "gwB");
    let b = s.start_gateway("gwB", "gwA");
    s.start_keepalived("gwA", 150, "gwB");
    assert!(
        s.lab
            .wait_vip("gwA", true, Duration::from_secs(10))
            .is_some(),
        "gwA never took the VIP"
    );
    s.start_keepalived("gwB", 100, "gwA");
    wait_until(Duration::from_secs(10), "standby status on gwB", || {
        s.standby_status("gwB").filter(|v| v["peer"] == "gwA")
    });
    (a, b)
}

fn warm_on_b(s: &Setup) {
    wait_until(Duration::from_secs(10), "the call warm on gwB", || {
        s.standby_status("gwB")
            .filter(|v| v["warm_calls"].as_u64() >= Some(1))
    });
}

/// `curl` against `node`'s own admin plane; the body of a 2xx answer.
fn admin(s: &Setup, node: &str, method: &str, path: &str, body: Option<&str>) -> String {
    let mut cmd = s.lab.command(node, "curl");
    cmd.args(["-sS", "--fail-with-body", "-X", method, "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = s
        .lab
        .output(cmd.arg(format!("http://127.0.0.1:9090{path}")));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{method} {path} on {node}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A tap sink in the callee's namespace and a clear-RTP tap of both legs of gwA's call.
fn start_tap(s: &Setup) -> Peer {
    let dest = format!("{}:40000", s.lab.node("callee").ip);
    let mut cmd = s.lab.command("callee", PEER);
    cmd.args(["tap-sink", "--listen", &dest, "--max-secs", "90"]);
    let sink = Peer::start(&s.lab, cmd, "tap sink");
    sink.event(Duration::from_secs(5), "listening");
    let calls: serde_json::Value =
        serde_json::from_str(&admin(s, "gwA", "GET", "/v1/calls", None)).expect("calls JSON");
    let id = calls["calls"][0]["id"]
        .as_str()
        .expect("a call on gwA")
        .to_string();
    let body =
        format!("{{\"legs\": \"both\", \"transport\": \"rtp\", \"destination\": \"{dest}\"}}");
    admin(
        s,
        "gwA",
        "POST",
        &format!("/v1/calls/{id}/taps"),
        Some(&body),
    );
    sink
}

/// gwA's node dies; the VIP move time and gwB's takeover summary.
fn fail_over(s: &Setup) -> (f64, serde_json::Value) {
    let t_kill = std::time::Instant::now();
    s.kill_node("gwA");
    s.lab
        .wait_vip("gwB", true, VIP_MOVE_BOUND)
        .unwrap_or_else(|| panic!("gwB did not take {VIP} within {VIP_MOVE_BOUND:?}"));
    let vip_ms = t_kill.elapsed().as_secs_f64() * 1000.0;
    let status = wait_until(Duration::from_secs(10), "a takeover on gwB", || {
        s.standby_status("gwB")
            .filter(|v| !v["last_takeover"].is_null())
    });
    let takeover = status["last_takeover"].clone();
    assert_eq!(takeover["claimed"], 1, "{status}");
    assert_eq!(takeover["installed"], 1, "{status}");
    (vip_ms, takeover)
}

/// The re-INVITE from the platform (CSeq continuing) and the BYE, through gwB.
fn in_dialog_through_b(caller: &mut Peer, callee: &mut Peer, hangup: Hangup) {
    caller.send("reinvite");
    assert_eq!(response(caller, "INVITE", 2)["status"], 200);
    let re = request(callee, "INVITE");
    assert!(
        re["cseq"].as_u64() > re["previous_cseq"].as_u64(),
        "the callee's CSeq went backwards: {re}"
    );
    std::thread::sleep(Duration::from_millis(500));
    match hangup {
        Hangup::Caller => {
            caller.send("bye");
            assert_eq!(response(caller, "BYE", 3)["status"], 200);
            assert_eq!(request(callee, "BYE")["answered"], 200);
        }
        Hangup::Callee => {
            callee.send("bye");
            assert_eq!(response(callee, "BYE", 1)["status"], 200);
            assert_eq!(request(caller, "BYE")["answered"], 200);
        }
    }
}

/// One call through gwA, gwA dies, gwB takes over; the re-INVITE and the BYE through gwB.
/// Returns the run's figures (also printed on a `FAILOVER_RESULT` line for the bench).
fn failover_run(sc: Scenario) -> serde_json::Value {
    let s = Setup::new("failover-call");
    let (a, b) = start_pair(&s);
    let _dump = OnFailure {
        setup: &s,
        standby: &b,
    };
    let mut callee = s.start_callee(&sc);
    callee.event(Duration::from_secs(5), "listening");
    let mut caller = s.start_caller(&sc);
    if sc.ring_ms > 0 {
        caller.event(Duration::from_secs(10), "ringing");
        std::thread::sleep(Duration::from_millis(500));
    } else {
        caller.event(Duration::from_secs(10), "answered");
    }
    let mut sink = sc.tap.then(|| start_tap(&s));
    if sc.ring_ms == 0 {
        std::thread::sleep(MEDIA_BEFORE);
    }
    warm_on_b(&s);
    if sc.redis_restart {
        s.lab.kill_all("redis");
        s.start_redis();
        // Redis is empty now: gwA republishes its call (gwB's warm copy from before the
        // restart says nothing), gwB reads it again.
        wait_until(Duration::from_secs(10), "gwA republishing its call", || {
            (!a.lines_with(&["standby_republish", "calls=1"]).is_empty()).then_some(())
        });
        warm_on_b(&s);
    }
    let (vip_ms, takeover) = fail_over(&s);
    if sc.ring_ms > 0 {
        caller.event(
            Duration::from_millis(sc.ring_ms) + Duration::from_secs(10),
            "answered",
        );
    }
    std::thread::sleep(MEDIA_AFTER);
    in_dialog_through_b(&mut caller, &mut callee, sc.hangup);
    let (cr, ce) = (
        caller.event(Duration::from_secs(10), "report"),
        callee.event(Duration::from_secs(10), "report"),
    );
    if let Some(sink) = sink.as_mut() {
        sink.send("stop");
        let r = sink.event(Duration::from_secs(5), "report");
        println!("tap sink: {r}");
        let gap = Duration::from_secs_f64(r["max_gap_ms"].as_f64().unwrap_or(f64::MAX) / 1000.0);
        assert!(
            gap <= GAP_BOUND,
            "the tap's copies stopped for {gap:?}: {r}"
        );
        // Both streams at 50 packets/s for the seconds before and after the failover.
        assert!(r["received"].as_u64() > Some(300), "few tap copies: {r}");
    }
    let figures = figures(&sc, vip_ms, &takeover, &cr, &ce);
    println!("FAILOVER_RESULT {figures}");
    println!("caller lines: {}", serde_json::Value::from(caller.lines()));
    println!("callee lines: {}", serde_json::Value::from(callee.lines()));
    check_media(&figures, &cr, &ce);
    figures
}

fn figures(
    sc: &Scenario,
    vip_ms: f64,
    takeover: &serde_json::Value,
    cr: &serde_json::Value,
    ce: &serde_json::Value,
) -> serde_json::Value {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    serde_json::json!({
        "scenario": format!("{sc:?}"),
        "vip_move_ms": vip_ms,
        "takeover_ms": takeover["duration_ms"],
        "gap_caller_to_callee_ms": ce["max_gap_ms"],
        "gap_callee_to_caller_ms": cr["max_gap_ms"],
        "lost_caller_to_callee": n(&cr["sent"]).saturating_sub(n(&ce["received"])),
        "lost_callee_to_caller": n(&ce["sent"]).saturating_sub(n(&cr["received"])),
        "auth_failures": n(&cr["refused"]) + n(&ce["refused"]),
        "caller_reconnects": n(&cr["connections"]).saturating_sub(1),
    })
}

/// Zero authentication failures, the gap each way within [`GAP_BOUND`], and no packet
/// lost outside it.
fn check_media(figures: &serde_json::Value, cr: &serde_json::Value, ce: &serde_json::Value) {
    assert_eq!(
        figures["auth_failures"], 0,
        "SRTP authentication failures: {cr} {ce}"
    );
    for (dir, r) in [("caller -> callee", ce), ("callee -> caller", cr)] {
        let gap = Duration::from_secs_f64(r["max_gap_ms"].as_f64().unwrap_or(f64::MAX) / 1000.0);
        assert!(
            gap <= GAP_BOUND,
            "{dir}: media gap {gap:?} above {GAP_BOUND:?}: {r}"
        );
    }
    let gap_packets = (GAP_BOUND.as_millis() / 20) as u64;
    for (dir, lost) in [
        ("caller -> callee", &figures["lost_caller_to_callee"]),
        ("callee -> caller", &figures["lost_callee_to_caller"]),
    ] {
        assert!(
            lost.as_u64() <= Some(gap_packets),
            "{dir}: {lost} packets lost: {cr} {ce}"
        );
    }
}

/// SIGKILL of the active gateway's node with a live AES-CM call; the platform hangs up
/// through the standby.
#[test]
fn srtp_call_survives_the_active_gateway_dying_and_the_caller_hangs_up_through_the_standby() {
    case(Scenario::new("AES_CM_128_HMAC_SHA1_80", Hangup::Caller));
}

/// The same with AEAD-GCM, and the callee hangs up through the standby.
#[test]
fn srtp_call_survives_the_active_gateway_dying_and_the_callee_hangs_up_through_the_standby() {
    case(Scenario::new("AEAD_AES_256_GCM", Hangup::Callee));
}

/// One failover case, skipped (saying why) where namespace tests cannot run.
fn case(sc: Scenario) {
    let Some(_alone) = lab_or_skip() else {
        return;
    };
    failover_run(sc);
}

/// The remaining suites, one failover each.
#[test]
fn every_srtp_suite_survives_a_failover() {
    let Some(_alone) = lab_or_skip() else {
        return;
    };
    for suite in [
        "AES_CM_128_HMAC_SHA1_32",
        "AES_256_CM_HMAC_SHA1_80",
        "AES_256_CM_HMAC_SHA1_32",
        "AEAD_AES_128_GCM",
    ] {
        println!("== {suite}");
        failover_run(Scenario::new(suite, Hangup::Caller));
    }
}

/// gwA dies while the callee is still ringing: gwB holds the early dialog, the 200 comes
/// through it and the call goes on there.
#[test]
fn an_early_dialog_survives_a_failover() {
    case(Scenario {
        ring_ms: 4000,
        ..Scenario::new("AES_CM_128_HMAC_SHA1_80", Hangup::Callee)
    });
}

/// Both streams wrap their 16-bit sequence (ROC 0 -> 1) about a second before gwA dies:
/// gwB must protect and unprotect with the stored rollover counter.
#[test]
fn a_sequence_wrap_before_the_failover_keeps_srtp_in_step() {
    case(Scenario {
        first_seq: Some(0xffff - 40),
        ..Scenario::new("AES_CM_128_HMAC_SHA1_80", Hangup::Caller)
    });
}

/// Redis is killed and started empty during the call: both nodes republish (gwA its call,
/// gwB reloads it) and the failover afterwards still takes the call over.
#[test]
fn redis_restarted_empty_then_a_failover_still_takes_the_call_over() {
    case(Scenario {
        redis_restart: true,
        ..Scenario::new("AEAD_AES_128_GCM", Hangup::Caller)
    });
}

/// Split brain: gwB stops hearing gwA's VRRP adverts, so both nodes hold the VIP and gwB
/// takes the call over while gwA still runs it. The epoch leaves exactly one owner: gwA
/// finds its epoch gone at its next write (an index refresh, every second here) and drops
/// the call, saying so.
#[test]
fn both_nodes_claiming_the_vip_leave_exactly_one_owner_of_the_call() {
    let Some(_alone) = lab_or_skip() else {
        return;
    };
    let mut s = Setup::new("failover-split");
    s.standby_extra = "index_refresh_secs = 1\n";
    let (a, b) = start_pair(&s);
    let _dump = OnFailure {
        setup: &s,
        standby: &b,
    };
    let sc = Scenario::new("AES_CM_128_HMAC_SHA1_80", Hangup::Caller);
    let callee = s.start_callee(&sc);
    callee.event(Duration::from_secs(5), "listening");
    let caller = s.start_caller(&sc);
    caller.event(Duration::from_secs(10), "answered");
    std::thread::sleep(Duration::from_secs(1));
    warm_on_b(&s);
    let nft = |args: &str| {
        let out = s
            .lab
            .output(s.lab.command("gwB", "nft").args(args.split(' ')));
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft("add table inet split");
    nft("add chain inet split in { type filter hook input priority 0 ; }");
    nft("add rule inet split in ip protocol vrrp drop");
    s.lab
        .wait_vip("gwB", true, VIP_MOVE_BOUND)
        .expect("gwB takes the VIP when it stops hearing gwA");
    assert!(
        s.lab.has_vip("gwA"),
        "gwA still holds the VIP too (split brain)"
    );
    let status = wait_until(Duration::from_secs(10), "a takeover on gwB", || {
        s.standby_status("gwB")
            .filter(|v| !v["last_takeover"].is_null())
    });
    assert_eq!(status["last_takeover"]["claimed"], 1, "{status}");
    wait_until(Duration::from_secs(10), "gwA fencing the call", || {
        a.logs().contains("standby_fenced").then_some(())
    });
    for l in a.lines_with(&["standby_fenced"]) {
        println!("gwA: {l}");
    }
    assert!(
        !b.logs().contains("standby_fenced"),
        "gwB must keep the call it claimed"
    );
    // Healed: one VRRP master again (gwA, the higher priority).
    nft("delete table inet split");
    s.lab
        .wait_vip("gwB", false, Duration::from_secs(5))
        .expect("gwB gives the VIP back once it hears gwA again");
}

/// A clear-RTP recording tap started on gwA goes on from gwB after the failover.
#[test]
fn an_active_recording_tap_resumes_on_the_standby() {
    case(Scenario {
        tap: true,
        ..Scenario::new("AES_CM_128_HMAC_SHA1_80", Hangup::Caller)
    });
}
