//! The failover tap sink: a recording engine's UDP socket for a clear-RTP tap (`transport
//! "rtp"`), counting the probe packets the tap copies (both streams) and the largest time
//! between two of them, so a test sees a tap resume on the new owner after a failover.
//!
//! Must not: wait without a bound (it stops at `max_run` or on `stop`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ms_since, Command, Emit, MAX_RUN};
use crate::rtp::{self, Stamp};
use crate::ProbeError;

/// Largest datagram read (an MTU-sized RTP packet with room to spare).
const MAX_DATAGRAM: usize = 2048;

/// Counts tap copies arriving on `listen` until `stop` or `max_run`, then emits a
/// `report` line (`received`, `foreign`, `max_gap_ms`).
pub async fn run(
    listen: SocketAddr,
    max_run: Duration,
    mut commands: mpsc::Receiver<Command>,
    emit: Emit<'_>,
) -> Result<(), ProbeError> {
    let start = Instant::now();
    let deadline = start + max_run.min(MAX_RUN);
    let sock = UdpSocket::bind(listen)
        .await
        .map_err(|e| ProbeError::io(format!("tap sink {listen}"), e))?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (mut received, mut foreign) = (0u64, 0u64);
    let (mut last, mut max_gap, mut gap_end) = (None::<Instant>, Duration::ZERO, 0u64);
    let mut commands_open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Command::Stop) => break,
                Some(_) => {}
                None => commands_open = false,
            },
            got = sock.recv_from(&mut buf) => {
                let Ok((n, _)) = got else { continue };
                let probe = rtp::payload(&buf[..n]).and_then(Stamp::read).is_some();
                if !probe {
                    foreign += 1;
                    continue;
                }
                let now = Instant::now();
                received += 1;
                if let Some(l) = last {
                    if now - l > max_gap {
                        max_gap = now - l;
                        gap_end = ms_since(start);
                    }
                }
                last = Some(now);
            }
        }
    }
    emit(serde_json::json!({
        "event": "report", "role": "tap", "t_ms": ms_since(start), "received": received,
        "foreign": foreign, "max_gap_ms": max_gap.as_secs_f64() * 1000.0,
        "max_gap_end_ms": gap_end,
    }));
    Ok(())
}
