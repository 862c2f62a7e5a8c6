//! Failover peers: the caller (a platform's SIPS trunk client) and the callee (a TLS SIP
//! UAS behind the gateway) of the hot-standby failover test and bench
//! (`tests/cluster_failover.rs`, `benches/cluster_failover/`), run as
//! `sbc-failover-peer caller|callee` inside network namespaces.
//!
//! Each side holds one call, sends SRTP at 50 packets/s (20 ms) toward the gateway, and
//! measures what it receives: packets, the largest inter-arrival gap, packets that did not
//! authenticate. The caller keeps its TLS connection alive with CRLF pings (RFC 5626
//! §3.5.1) and reconnects to the gateway when the connection closes or is reset, as a
//! platform does after a failover; requests made while it is disconnected wait for the next
//! connection. In-dialog requests (re-INVITE, BYE) are made on command (a line on stdin:
//! `reinvite`, `bye`, `stop`) and their outcome is reported. Everything is printed as one
//! JSON object per line ([`Emit`]), ending with a `report` line. A third peer, the tap
//! sink ([`sink`]), counts what a recording tap copies.
//!
//! Owns: the peers' connections, dialogs, media legs and counters. Must not: log keys,
//! or run without a bound (every peer stops after its `max_run`, at most [`MAX_RUN`]).

pub mod callee;
pub mod caller;
mod link;
pub mod sink;

use std::time::Duration;

use tokio::time::Instant;

use crate::client::PACKET_INTERVAL;
use crate::media::{Got, Leg};
use crate::rtp::Stamp;

pub use link::{spawn_link, LinkEvent, LinkHandle, LinkId};

/// The caller's CRLF keep-alive interval: short enough that a connection the new owner
/// of the VIP resets is noticed within a fraction of the 500 ms media-gap target.
pub const KEEPALIVE: Duration = Duration::from_millis(200);

/// Longest any peer runs: the failover test and bench runs last well under a minute.
pub const MAX_RUN: Duration = Duration::from_secs(300);

/// The caller's stream id in the probe stamp.
pub const CALLER_STREAM: u8 = 1;

/// The callee's stream id in the probe stamp.
pub const CALLEE_STREAM: u8 = 2;

/// Requests waiting for a connection (a peer makes a handful per call).
pub const MAX_QUEUED: usize = 16;

/// After its call ends, how long a peer keeps running so that queued messages (the 200 to
/// a BYE) reach the wire before the process exits (a write takes well under 1 ms here).
pub const LINGER: Duration = Duration::from_millis(200);

/// What the test asks a peer to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Send a re-INVITE (same offer, CSeq one above the last).
    ReInvite,
    /// Hang up.
    Bye,
    /// Stop at once and report.
    Stop,
}

impl Command {
    /// `reinvite`, `bye` or `stop` (surrounding blanks ignored).
    pub fn parse(line: &str) -> Option<Command> {
        match line.trim() {
            "reinvite" => Some(Command::ReInvite),
            "bye" => Some(Command::Bye),
            "stop" => Some(Command::Stop),
            _ => None,
        }
    }
}

/// Where a peer's JSON lines go (stdout in the binary, a vector in unit tests).
pub type Emit<'a> = &'a mut (dyn FnMut(serde_json::Value) + Send);

/// One received media direction, counted at the receiver, plus what this side sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaStats {
    /// Packets this side sent.
    pub sent: u32,
    /// Authenticated packets of the far side's stream.
    pub received: u32,
    /// Packets that did not authenticate.
    pub refused: u32,
    /// Highest stamp number received (the far side numbers its packets from 1).
    pub highest: u32,
    /// Largest time between two received packets.
    pub max_gap: Duration,
    /// When (since the peer started) the largest gap ended.
    pub max_gap_end: Duration,
    last: Option<Instant>,
}

impl MediaStats {
    /// Counts one authenticated packet received at `now` (`start`: when the peer started).
    pub fn received_at(&mut self, now: Instant, start: Instant, stamp: &Stamp) {
        self.received += 1;
        self.highest = self.highest.max(stamp.seq);
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            if gap > self.max_gap {
                self.max_gap = gap;
                self.max_gap_end = now.saturating_duration_since(start);
            }
        }
        self.last = Some(now);
    }

    /// The call ended at `now`: silence since the last packet counts as a gap too (media
    /// that never came back after a failover is one long gap, not none).
    pub fn close(&mut self, now: Instant, start: Instant) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            if gap > self.max_gap {
                self.max_gap = gap;
                self.max_gap_end = now.saturating_duration_since(start);
            }
        }
    }

    /// Packets the far side numbered up to the highest received but that never came.
    pub fn lost(&self) -> u32 {
        self.highest.saturating_sub(self.received)
    }

    /// The counters as JSON fields.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "received": self.received,
            "refused": self.refused,
            "highest": self.highest,
            "lost": self.lost(),
            "max_gap_ms": self.max_gap.as_secs_f64() * 1000.0,
            "max_gap_end_ms": self.max_gap_end.as_millis() as u64,
        })
    }
}

/// What a peer's loop waits for besides media: connection events, commands, its end.
pub(crate) enum Input {
    Event(LinkEvent),
    Command(Command),
    /// `max_run` is over.
    Deadline,
    /// Every connection task and the acceptor are gone.
    EventsClosed,
}

/// The sources of [`Input`]; stdin closing only stops commands.
pub(crate) struct Inputs<'a> {
    pub(crate) events: &'a mut tokio::sync::mpsc::Receiver<LinkEvent>,
    pub(crate) commands: &'a mut tokio::sync::mpsc::Receiver<Command>,
    pub(crate) commands_open: bool,
    pub(crate) deadline: Instant,
}

impl<'a> Inputs<'a> {
    pub(crate) fn new(
        events: &'a mut tokio::sync::mpsc::Receiver<LinkEvent>,
        commands: &'a mut tokio::sync::mpsc::Receiver<Command>,
        deadline: Instant,
    ) -> Inputs<'a> {
        Inputs {
            events,
            commands,
            commands_open: true,
            deadline,
        }
    }

    /// The next input (cancel-safe: channel receives and a sleep).
    pub(crate) async fn next(&mut self) -> Input {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => return Input::Deadline,
                ev = self.events.recv() => return ev.map_or(Input::EventsClosed, Input::Event),
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(c) => return Input::Command(c),
                    None => self.commands_open = false,
                },
            }
        }
    }
}

/// A peer's media: its leg once the call has one, the 20 ms send clock and the counters.
pub(crate) struct MediaSide {
    pub(crate) leg: Option<Leg>,
    pub(crate) stats: MediaStats,
    /// The 20 ms stream is on (the caller once answered, the callee once it answered).
    pub(crate) sending: bool,
    tick: tokio::time::Interval,
    start: Instant,
}

impl MediaSide {
    pub(crate) fn new(start: Instant) -> MediaSide {
        let mut tick = tokio::time::interval(PACKET_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        MediaSide {
            leg: None,
            stats: MediaStats::default(),
            sending: false,
            tick,
            start,
        }
    }

    /// One step: a packet sent on the tick, or one received and counted; never completes
    /// without a leg. Receives wait at most until `far`.
    pub(crate) async fn step(&mut self, far: Instant) {
        let Some(leg) = self.leg.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = self.tick.tick(), if self.sending => {
                let _ = leg.send_next().await;
            }
            got = leg.recv(far) => {
                if let Ok(Some(Got::Probe { stamp, .. })) = got {
                    self.stats.received_at(Instant::now(), self.start, &stamp);
                }
            }
        }
    }

    /// The call is over: silence up to now counts as a gap; then [`LINGER`] so queued
    /// messages reach the wire.
    pub(crate) async fn end(&mut self) {
        self.stats.close(Instant::now(), self.start);
        tokio::time::sleep(LINGER).await;
    }

    /// The `report` line: the counters, `role`, how the call `ended`.
    pub(crate) fn report(&mut self, role: &str, ended: &Option<String>) -> serde_json::Value {
        if let Some(l) = &self.leg {
            self.stats.sent = l.stats.sent;
            self.stats.refused = l.stats.refused;
        }
        let mut v = self.stats.to_json();
        v["event"] = "report".into();
        v["role"] = role.into();
        v["t_ms"] = ms_since(self.start).into();
        v["ended"] = ended.clone().unwrap_or_default().into();
        v
    }
}

/// Milliseconds since `start`, for event lines.
pub(crate) fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
