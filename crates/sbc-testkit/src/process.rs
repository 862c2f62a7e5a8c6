//! The `sbc-edge` binary as a child process: started on a config file, its addresses read
//! from the banner, killed when the test ends however it ends.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sip::{printed_addresses, Printed};

/// How long the binary may take to print its addresses (a debug build under a loaded
/// host binds, makes keys and starts workers in well under a second; 20 s is slack).
pub const START_WAIT: Duration = Duration::from_secs(20);

/// A running `sbc-edge`; killed and reaped on drop.
pub struct Gateway {
    pub child: Child,
    /// Where it said it listens.
    pub addrs: Printed,
}

impl Gateway {
    /// Starts `bin` (pass `env!("CARGO_BIN_EXE_sbc-edge")`) with `--config config` and
    /// waits, at most [`START_WAIT`], for its banner. stderr (the logs) is discarded.
    pub fn spawn(bin: &str, config: &Path) -> Gateway {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runs sbc-edge");
        let stdout = child.stdout.take().expect("piped stdout");
        let addrs = match printed_addresses(stdout, START_WAIT) {
            Some(a) => a,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sbc-edge did not print its addresses within {START_WAIT:?}");
            }
        };
        Gateway { child, addrs }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
