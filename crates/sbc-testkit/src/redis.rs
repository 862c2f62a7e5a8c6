//! Redis and Sentinel processes for cluster tests: `redis-server` / `redis-sentinel` on
//! loopback ephemeral ports, no persistence, in a temp dir, killed when dropped. Tests
//! that need them call [`missing`] first and skip (printing why) when the binaries are
//! not installed, so plain `cargo test --workspace` passes without them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after it is started.
const START_WITHIN: Duration = Duration::from_secs(10);

/// Why cluster tests cannot run here (`None`: they can).
pub fn missing() -> Option<String> {
    for bin in ["redis-server", "redis-sentinel"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
        if !found {
            return Some(format!(
                "{bin} is not on PATH (apt-get install redis-server redis-sentinel; .ci/run's cluster stage does)"
            ));
        }
    }
    None
}

/// A free loopback TCP port (bound and released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running redis-server or redis-sentinel.
pub struct RedisProcess {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    bin: &'static str,
}

impl RedisProcess {
    /// A standalone master on a fresh port.
    pub fn server(dir: &Path) -> RedisProcess {
        RedisProcess::start("redis-server", dir, free_port(), &[])
    }

    /// A replica of the server on `master`.
    pub fn replica(dir: &Path, master: u16) -> RedisProcess {
        RedisProcess::start(
            "redis-server",
            dir,
            free_port(),
            &["--replicaof", "127.0.0.1", &master.to_string()],
        )
    }

    /// A sentinel watching `master` as `name` with quorum 1 and a 1 s down-after.
    pub fn sentinel(dir: &Path, master: u16, name: &str) -> RedisProcess {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {master} 1\n\
sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n\
sentinel parallel-syncs {name} 1\n"
            ),
        )
        .expect("sentinel conf");
        let mut p = RedisProcess {
            child: None,
            port,
            dir: dir.to_path_buf(),
            args: vec![conf.display().to_string()],
            bin: "redis-sentinel",
        };
        p.spawn();
        p
    }

    fn start(bin: &'static str, dir: &Path, port: u16, extra: &[&str]) -> RedisProcess {
        let data = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&data).expect("redis dir");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &data.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = RedisProcess {
            child: None,
            port,
            dir: dir.to_path_buf(),
            args,
            bin,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let child = Command::new(self.bin)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.bin));
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        while Instant::now() < deadline {
            if self.command("PING").is_some_and(|r| r.contains("PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} on port {} did not answer PING", self.bin, self.port);
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Send one inline command; the raw reply (`None` if it cannot connect).
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        // One reply: read until a short pause (replies here are small).
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    s.set_read_timeout(Some(Duration::from_millis(50))).ok()?;
                }
                Err(_) => break,
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// Wait (at most `within`) until `INFO replication` contains `text`.
    pub fn wait_info(&self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self
                .command("INFO replication")
                .is_some_and(|r| r.contains(text))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
