//! A spawned `sbc-edge` process: started with arguments, its start banner read for the
//! addresses it prints ([`crate::sip::printed_addresses`]), its stderr (the logs)
//! collected, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sip::{printed_addresses, Printed};

/// How long a spawned gateway may take to print its addresses (a debug build on a busy
/// CI machine included).
pub const START_WAIT: Duration = Duration::from_secs(30);

/// A running `sbc-edge`; killed and reaped on drop.
pub struct Spawned {
    pub child: Child,
    pub printed: Printed,
    logs: Arc<Mutex<String>>,
}

impl Spawned {
    /// Starts `bin` with `args` (`RUST_LOG=info`) and waits for its banner. Panics if it
    /// does not print its addresses within [`START_WAIT`], with its logs.
    pub fn start(bin: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Spawned {
        let mut cmd = Command::new(bin);
        for a in args {
            cmd.arg(a);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs sbc-edge");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let Some(printed) = printed_addresses(stdout, START_WAIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sbc-edge printed no addresses; logs:\n{}",
                logs.lock().unwrap()
            );
        };
        Spawned {
            child,
            printed,
            logs,
        }
    }

    /// The logs so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
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
