//! Network namespaces for the hot-standby failover test and bench ([`Lab`]): one namespace
//! per node (gateways, caller, callee, Redis), each with an `eth0` on a bridge that lives in
//! a namespace of its own, addresses in [`SUBNET`], the VIP [`VIP`] moved by keepalived
//! ([`Keepalived`]). Everything is made with `ip` (iproute2) under names unique to the run
//! and removed when the [`Lab`] is dropped, also when the test fails: the processes started
//! in it are killed, then the namespaces deleted (which deletes their veths and bridge).
//!
//! Needs root, `ip`, `keepalived`, `redis-server`, `nft` and `curl`; tests call [`missing`] first and skip,
//! printing why, when something is not there.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lab's subnet (a /24; node addresses are `10.77.0.N`).
pub const SUBNET: &str = "10.77.0.0/24";

/// The VIP the gateways' SIP listener and media use.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

/// Prefix length of every lab address.
const PREFIX_LEN: u8 = 24;

/// How long a command of `ip` may take before the lab gives up (they take milliseconds).
const IP_WAIT: Duration = Duration::from_secs(10);

static RUNS: AtomicU32 = AtomicU32::new(0);

fn on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Why namespace tests cannot run here (`None`: they can).
pub fn missing() -> Option<String> {
    if !is_root() {
        return Some("not root (network namespaces need CAP_NET_ADMIN; .ci/run's failover stage runs as root)".into());
    }
    for (bin, pkg) in [
        ("ip", "iproute2"),
        ("keepalived", "keepalived"),
        ("redis-server", "redis-server"),
        // The split-brain case drops VRRP with nft; the tap case talks to the admin API.
        ("nft", "nftables"),
        ("curl", "curl"),
    ] {
        if on_path(bin).is_none() {
            return Some(format!(
                "{bin} is not installed (apt-get install {pkg}; .ci/run's failover stage does)"
            ));
        }
    }
    None
}

/// One node of the lab.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// The namespace's name (unique to the run).
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The namespaces of one run; removed on drop.
pub struct Lab {
    /// Unique to the run: a prefix of every namespace and interface name.
    pub id: String,
    bridge_ns: String,
    pub nodes: Vec<Node>,
    children: Mutex<Vec<Child>>,
}

/// Runs `ip args...`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) -> Output {
    let out = run(Command::new(on_path("ip").unwrap_or_else(|| "ip".into())).args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let until = Instant::now() + IP_WAIT;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < until, "{cmd:?} took over {IP_WAIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.wait_with_output().expect("output")
}

impl Lab {
    /// Namespaces for `nodes` (name, last octet), all on one bridge.
    pub fn new(nodes: &[(&str, u8)]) -> Lab {
        let id = format!(
            "fo{}x{}",
            std::process::id() % 100_000,
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let bridge_ns = format!("{id}-br");
        let mut lab = Lab {
            id: id.clone(),
            bridge_ns: bridge_ns.clone(),
            nodes: Vec::new(),
            children: Mutex::new(Vec::new()),
        };
        ip(&["netns", "add", &bridge_ns]);
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"]);
        for (i, (name, octet)) in nodes.iter().enumerate() {
            let ns = format!("{id}-{name}");
            ip(&["netns", "add", &ns]);
            lab.nodes.push(Node {
                name: name.to_string(),
                ns: ns.clone(),
                ip: Ipv4Addr::new(10, 77, 0, *octet),
            });
            // Interface names are at most 15 bytes.
            let (outer, inner) = (format!("{id}b{i}"), format!("{id}n{i}"));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &outer, "netns", &bridge_ns]);
            ip(&["link", "set", &inner, "netns", &ns, "name", "eth0"]);
            ip(&[
                "-n", &bridge_ns, "link", "set", &outer, "master", "br0", "up",
            ]);
            let addr = format!("10.77.0.{octet}/{PREFIX_LEN}");
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `program` to be run inside `node`'s namespace.
    pub fn command(&self, node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(on_path("ip").unwrap_or_else(|| "ip".into()));
        c.args(["netns", "exec", &self.node(node).ns]).arg(program);
        c
    }

    /// Runs `cmd` to completion (bounded), returning its output.
    pub fn output(&self, cmd: &mut Command) -> Output {
        run(cmd)
    }

    /// Starts `cmd` (made by [`Lab::command`]) and keeps it to be killed on drop.
    pub fn spawn(&self, mut cmd: Command) -> u32 {
        let child = cmd.spawn().expect("spawn in namespace");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Takes a started child back (to read its pipes); it is then the caller's to reap.
    pub fn take(&self, pid: u32) -> Option<Child> {
        let mut c = self.children.lock().unwrap();
        let at = c.iter().position(|ch| ch.id() == pid)?;
        Some(c.remove(at))
    }

    /// Hands a child back to be killed on drop.
    pub fn adopt(&self, child: Child) {
        self.children.lock().unwrap().push(child);
    }

    /// The node's IPv4 addresses on `eth0`.
    pub fn addrs(&self, node: &str) -> Vec<Ipv4Addr> {
        let out = ip(&[
            "-n",
            &self.node(node).ns,
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.split('/').next()?.parse().ok())
            .collect()
    }

    /// The node holds the VIP.
    pub fn has_vip(&self, node: &str) -> bool {
        self.addrs(node).contains(&VIP)
    }

    /// Polls until `node` holds (or not, `want`) the VIP; the time it took, `None` after
    /// `within`.
    pub fn wait_vip(&self, node: &str, want: bool, within: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.has_vip(node) == want {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// The node drops off the network (its link goes down), as a dead machine does.
    pub fn unplug(&self, node: &str) {
        ip(&["-n", &self.node(node).ns, "link", "set", "eth0", "down"]);
    }

    /// Back on the network.
    pub fn plug(&self, node: &str) {
        ip(&["-n", &self.node(node).ns, "link", "set", "eth0", "up"]);
    }

    /// SIGKILLs every process in `node`'s namespace (keepalived's children too).
    pub fn kill_all(&self, node: &str) {
        let out = ip(&["netns", "pids", &self.node(node).ns]);
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ch in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        let all: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.ns.clone())
            .chain([self.bridge_ns.clone()])
            .collect();
        for ns in &all {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for ns in &all {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// keepalived for one gateway node: VRRP over unicast between the two gateways, the VIP on
/// `eth0`, `notify_master` running `notify` (a script path) on the node that becomes
/// master.
#[derive(Debug, Clone)]
pub struct Keepalived {
    pub priority: u8,
    /// VRRP advert interval in seconds (0.1 in the test: the issue's setting); VRRPv3,
    /// since VRRPv2 rounds it to whole seconds.
    pub advert_int: f64,
    pub peer: Ipv4Addr,
    pub notify_master: Option<PathBuf>,
}

impl Keepalived {
    /// The configuration text for `node`.
    pub fn config(&self, node: &Node) -> String {
        let notify = self
            .notify_master
            .as_ref()
            .map(|p| format!("    notify_master \"{}\"\n", p.display()))
            .unwrap_or_default();
        format!(
            "global_defs {{\n    router_id {name}\n    script_user root\n}}\n\
vrrp_instance VIP_SBC {{\n    version 3\n    state BACKUP\n    interface eth0\n    virtual_router_id 77\n\
    priority {prio}\n    advert_int {adv}\n    unicast_src_ip {src}\n    unicast_peer {{\n        {peer}\n    }}\n\
    virtual_ipaddress {{\n        {VIP}/{PREFIX_LEN} dev eth0\n    }}\n{notify}}}\n",
            name = node.name,
            prio = self.priority,
            adv = self.advert_int,
            src = node.ip,
            peer = self.peer,
        )
    }

    /// Starts keepalived (VRRP only, in the foreground) in `node`'s namespace with its
    /// config, pid files and log in `dir`.
    pub fn start(&self, lab: &Lab, node: &str, dir: &Path) -> u32 {
        let n = lab.node(node);
        let conf = dir.join(format!("keepalived-{node}.conf"));
        std::fs::write(&conf, self.config(n)).expect("write keepalived.conf");
        let log = std::fs::File::create(dir.join(format!("keepalived-{node}.log"))).expect("log");
        let mut cmd = lab.command(node, on_path("keepalived").expect("keepalived"));
        cmd.arg("--dont-fork")
            .arg("--log-console")
            .arg("--vrrp")
            .arg("--use-file")
            .arg(&conf)
            .arg("--pid")
            .arg(dir.join(format!("keepalived-{node}.pid")))
            .arg("--vrrp_pid")
            .arg(dir.join(format!("vrrp-{node}.pid")))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null());
        lab.spawn(cmd)
    }
}
