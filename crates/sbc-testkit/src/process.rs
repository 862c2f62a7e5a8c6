//! A spawned `sbc-edge` process in a test ([`Spawned`]): started on a config file with its
//! stdout banner read ([`crate::sip::printed_addresses`]) and its stderr (the logs)
//! collected, signalled by the test, killed when the test ends however it ends. Also the
//! bounded wait every such test needs ([`eventually`]), a bounded run to completion
//! ([`run`], for `call`, `ctl`, `check-config`) and a file-mode check ([`has_mode`]).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use nix::sys::signal::Signal;

use crate::sip::{printed_addresses, Printed};

/// How long a spawned gateway may take to print its addresses.
pub const START_WITHIN: Duration = Duration::from_secs(20);

/// A running `sbc-edge`.
pub struct Spawned {
    child: Child,
    /// Where it said it listens.
    pub printed: Printed,
    logs: Arc<Mutex<String>>,
}

impl Spawned {
    /// Run `bin` (`env!("CARGO_BIN_EXE_sbc-edge")`) with `--config config`, `RUST_LOG=info`
    /// unless `env` sets it, and `env`; panics if it does not print its addresses in time.
    pub fn start(bin: &str, config: &Path, env: &[(&str, &str)]) -> Spawned {
        Spawned::with_args(bin, &[&"--config", &config], env)
    }

    /// Run `bin` with `args` (the embedded default with `--demo-dir`, say), `RUST_LOG=info`
    /// unless `env` sets it, and `env`; panics if it does not print its addresses in time.
    pub fn with_args(
        bin: &str,
        args: &[&dyn AsRef<std::ffi::OsStr>],
        env: &[(&str, &str)],
    ) -> Spawned {
        let mut cmd = Command::new(bin);
        for a in args {
            cmd.arg(a);
        }
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("runs sbc-edge");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let printed = match printed_addresses(stdout, START_WITHIN) {
            Some(p) => p,
            None => {
                let _ = child.kill();
                panic!(
                    "sbc-edge did not print its addresses; its logs:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        Spawned {
            child,
            printed,
            logs,
        }
    }

    /// The process id (for its CPU time in `/proc/PID/stat`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal sbc-edge");
    }

    /// Everything it has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The log lines that contain every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect()
    }

    /// Wait (at most `within`) until a logged line contains every one of `parts`.
    pub async fn logged(&self, parts: &[&str], within: Duration) {
        let found = eventually(within, async || !self.lines_with(parts).is_empty()).await;
        assert!(found, "no log line with {parts:?}; logs:\n{}", self.logs());
    }

    /// Wait (at most `within`) for the process to exit.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `pred` every 50 ms until it holds (true) or `within` passes (false).
pub async fn eventually(within: Duration, mut pred: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if pred().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `bin` with `args` to completion (bounded by `within`): exit code, stdout, stderr.
pub fn run(
    bin: &str,
    args: &[&dyn AsRef<std::ffi::OsStr>],
    within: Duration,
) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    for a in args {
        cmd.arg(a);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs sbc-edge");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(within) {
        Ok(out) => out.expect("waits for sbc-edge"),
        Err(_) => {
            // Bounded: kill it by its pid (the child was moved to the waiting thread).
            if let Ok(pid) = i32::try_from(id) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            panic!(
                "{bin} {:?} did not finish within {within:?}",
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            );
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True if `path` exists with exactly `mode` permission bits.
pub fn has_mode(path: &Path, mode: u32) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == mode)
}
