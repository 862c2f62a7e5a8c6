//! The transport's log lines a peer can trigger at will, and why connections end.
//!
//! Owns: the closed reasons a connection ends for ([`CloseReason`], the `reason` label of
//! `sbc_sip_connections_closed_total`), the closed set of aggregated events ([`LogEvent`]),
//! the shared aggregator ([`Logs`], over `sbc_core::log_agg`) with its `log_first!` macro
//! and the task that writes the interval summaries. Must not: count metrics for the
//! events (each site counts its own; only log lines are aggregated).

use super::*;

/// How often summaries of aggregated log lines are checked for: an interval's summary is
/// written at most this late.
pub(super) const LOG_FLUSH_TICK: Duration = Duration::from_secs(1);

/// Why a connection ended: the `reason` label of `sbc_sip_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// The peer closed it (or a read failed).
    Peer,
    /// Silent for `sip.idle_timeout_secs`.
    Idle,
    /// A message not complete within `sip.message_timeout_ms` of its first byte.
    MessageTimeout,
    /// One connection more of its source would have held an incomplete message than
    /// `sip.max_partial_connections_per_source` allows.
    SlowSource,
    /// A message past `sip.max_message_bytes`.
    TooLarge,
    /// The stream cannot be framed (bad Content-Length).
    Framing,
    /// [`MAX_MALFORMED_PER_CONNECTION`] malformed messages in a row.
    MalformedFlood,
    /// Closed by the core (e.g. repeated refusals of an unrecognised peer).
    Core,
    /// The core has stopped (shutdown).
    Shutdown,
}

impl CloseReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Idle => "idle",
            CloseReason::MessageTimeout => "message_timeout",
            CloseReason::SlowSource => "slow_source",
            CloseReason::TooLarge => "too_large",
            CloseReason::Framing => "framing",
            CloseReason::MalformedFlood => "malformed_flood",
            CloseReason::Core => "core",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Transport log lines a peer can trigger at will, aggregated per source and interval.
/// The names are the lines' `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum LogEvent {
    PeerRecognised,
    RecognitionFailed,
    HandshakeFailed,
    HandshakeTimeout,
    MalformedRequest,
    MalformedMessage,
    MalformedFlood,
    MessageTooLarge,
    FramingError,
    FloodSourceBlocked,
    Overload,
    MessageTimeout,
    SlowSource,
    /// A message for a connection whose write queue was full (or that was closing):
    /// dropped. Keyed by the connection's peer address.
    WriteQueueFull,
}

impl LogEvent {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            LogEvent::PeerRecognised => "peer_recognised",
            LogEvent::RecognitionFailed => "recognition_failed",
            LogEvent::HandshakeFailed => "tls_handshake_failed",
            LogEvent::HandshakeTimeout => "tls_handshake_timeout",
            LogEvent::MalformedRequest => "malformed_request",
            LogEvent::MalformedMessage => "malformed_message",
            LogEvent::MalformedFlood => "malformed_flood",
            LogEvent::MessageTooLarge => "message_too_large",
            LogEvent::FramingError => "framing_error",
            LogEvent::FloodSourceBlocked => "flood_source_blocked",
            LogEvent::Overload => "overload",
            LogEvent::MessageTimeout => "message_timeout",
            LogEvent::SlowSource => "slow_source",
            LogEvent::WriteQueueFull => "write_queue_full",
        }
    }

    /// The level of its first line and of its summary (repeats in between are `debug`).
    pub(super) fn level(self) -> Level {
        match self {
            LogEvent::PeerRecognised => Level::INFO,
            _ => Level::WARN,
        }
    }
}

/// The server's log aggregator, shared by every reader.
#[derive(Debug, Clone)]
pub(super) struct Logs(Arc<Mutex<LogAggregator<LogEvent>>>);

impl Logs {
    pub(super) fn new() -> Logs {
        Logs(Arc::new(Mutex::new(LogAggregator::new(
            DEFAULT_INTERVAL,
            DEFAULT_MAX_KEYS,
        ))))
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, LogAggregator<LogEvent>> {
        // Plain counters, consistent at every step: a poisoned lock is safe to keep using.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count `event` from `source`; true: log this one now at the event's level.
    pub(super) fn first(&self, event: LogEvent, source: IpAddr) -> bool {
        self.lock().record(Instant::now(), event, source)
    }

    /// Write the summaries of an ended interval (all of them when `all`, at shutdown).
    pub(super) fn flush(&self, all: bool) {
        let now = Instant::now();
        let lines = if all {
            self.lock().flush_all(now)
        } else {
            self.lock().flush(now)
        };
        for line in &lines {
            emit_summary(line);
        }
    }
}

/// One summary line: `count` more of `event` from `source` than the line logged at once.
pub(super) fn emit_summary(s: &Summary<LogEvent>) {
    let source = s
        .source
        .map_or_else(|| "(other sources)".to_string(), |ip| ip.to_string());
    let interval_secs = s.interval.as_secs_f64();
    let event = s.event.as_str();
    let (count, total) = (s.count, s.total);
    if s.event.level() == Level::INFO {
        info!(
            event,
            source = %source,
            count,
            total,
            interval_secs,
            "repeated: {count} more in the interval"
        );
    } else {
        warn!(
            event,
            source = %source,
            count,
            total,
            interval_secs,
            "repeated: {count} more in the interval"
        );
    }
}

/// Log a line through the aggregator: at `$level` if it is the first of its (event,
/// source) in the interval, at `debug` otherwise.
macro_rules! log_first {
    ($logs:expr, $level:ident, $event:expr, $source:expr, $($field:tt)*) => {{
        let event: LogEvent = $event;
        if $logs.first(event, $source) {
            tracing::$level!(event = event.as_str(), $($field)*);
        } else {
            tracing::debug!(event = event.as_str(), $($field)*);
        }
    }};
}

/// Write the aggregated log lines' summaries as their intervals end, and what is left at
/// shutdown.
pub(super) async fn flush_logs(logs: Logs, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LOG_FLUSH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => logs.flush(false),
            _ = shutdown.changed() => {
                logs.flush(true);
                return;
            }
        }
    }
}
