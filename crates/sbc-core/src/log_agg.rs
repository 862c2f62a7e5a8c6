//! Log aggregation per (event, source) and interval, sans-IO: the shape of the SRTP
//! auth-failure line, for any log line a peer can trigger at will.
//!
//! The first occurrence of an (event, source) key in an interval is logged at once (with
//! its details); every further occurrence of that key in the same interval is only counted,
//! and at the end of the interval one summary line per key carries the count. A peer that
//! repeats an event a million times in an interval therefore costs two log lines, not a
//! million.
//!
//! Owns: the counts of the current interval, bounded to `max_keys` keys plus one overflow
//! bucket per event (keys that did not fit are summed there, without their source).
//! Must not: log, read the clock (`now` is passed in), or count for metrics (metrics count
//! every event; only log lines are aggregated).
//!
//! Driver loop (any driver: a tokio task, the sans-IO B2BUA's `handle_timeout`):
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::{Duration, Instant};
//! use sbc_core::log_agg::LogAggregator;
//!
//! #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
//! enum Event { Malformed }
//!
//! let mut agg: LogAggregator<Event> = LogAggregator::new(Duration::from_secs(10), 256);
//! let src = IpAddr::V4(Ipv4Addr::LOCALHOST);
//! let t0 = Instant::now();
//! assert!(agg.record(t0, Event::Malformed, src)); // first: log it now, with details
//! assert!(!agg.record(t0, Event::Malformed, src)); // repeat: counted only
//! // At or after `poll_timeout()`, flush and log one line per summary.
//! let end = agg.poll_timeout().expect("a window is open");
//! let lines = agg.flush(end);
//! assert_eq!(lines.len(), 1);
//! assert_eq!((lines[0].count, lines[0].total), (1, 2));
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Interval of aggregation by default: the window of the SRTP auth-failure line
/// (`sbc_media::relay::AUTH_WINDOW`), so every aggregated line in the logs reads the same.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Keys tracked per interval by default. Each key costs at most two lines per interval
/// (its first occurrence and its summary), so 256 keys bound a flood from many sources to
/// about 50 lines a second at the default interval, and the table to a few tens of KB.
/// Past it, occurrences are summed per event in the overflow bucket.
pub const DEFAULT_MAX_KEYS: usize = 256;

/// One summary line at the end of an interval: the occurrences of `event` from `source`
/// that were not logged one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<E, S = IpAddr> {
    pub event: E,
    /// `None`: the overflow bucket (sources past `max_keys`, summed per event).
    pub source: Option<S>,
    /// Occurrences counted but not logged individually (the total minus the one logged).
    pub count: u64,
    /// Every occurrence in the interval, the logged one included.
    pub total: u64,
    /// How long the interval lasted (from its first occurrence to the flush).
    pub interval: Duration,
}

/// Counts per (event, source) over an interval. `E` is a closed enum of log events (it
/// also bounds the overflow bucket); `S` is what identifies a source (an IP address by
/// default; a tenant or a connection id works too).
#[derive(Debug)]
pub struct LogAggregator<E, S = IpAddr> {
    interval: Duration,
    max_keys: usize,
    /// Start of the current interval; `None` while nothing was recorded.
    started: Option<Instant>,
    /// Occurrences per key in the current interval, the first included.
    counts: HashMap<(E, S), u64>,
    /// Occurrences per event of keys that did not fit in `counts`.
    overflow: HashMap<E, u64>,
}

impl<E, S> LogAggregator<E, S>
where
    E: Copy + Eq + Hash,
    S: Clone + Eq + Hash,
{
    /// An aggregator with intervals of `interval` and at most `max_keys` keys (at least 1).
    pub fn new(interval: Duration, max_keys: usize) -> LogAggregator<E, S> {
        LogAggregator {
            interval,
            max_keys: max_keys.max(1),
            started: None,
            counts: HashMap::new(),
            overflow: HashMap::new(),
        }
    }

    /// Count one occurrence of `event` from `source` at `now`. True: it is the first of its
    /// key in this interval, log it now (with its details); false: it is counted into the
    /// summary line. The overflow bucket is one key per event: its first occurrence also
    /// returns true.
    ///
    /// An interval ends only when the driver flushes it: a late flush makes the interval
    /// longer, never loses a count.
    pub fn record(&mut self, now: Instant, event: E, source: S) -> bool {
        if self.started.is_none() {
            self.started = Some(now);
        }
        let key = (event, source);
        if let Some(n) = self.counts.get_mut(&key) {
            *n = n.saturating_add(1);
            return false;
        }
        if self.counts.len() < self.max_keys {
            self.counts.insert(key, 1);
            return true;
        }
        let n = self.overflow.entry(event).or_insert(0);
        *n = n.saturating_add(1);
        *n == 1
    }

    /// When the current interval ends (flush then); `None` while nothing was recorded.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.started.map(|s| s + self.interval)
    }

    /// End the interval if `now` is at or past its end: its summaries (keys that occurred
    /// more than once; in no particular order), and the next occurrence of every key is
    /// logged at once again. Before the end: nothing.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary<E, S>> {
        match self.poll_timeout() {
            Some(end) if now >= end => self.flush_all(now),
            _ => Vec::new(),
        }
    }

    /// End the interval now, whatever its age (at shutdown): as [`LogAggregator::flush`].
    pub fn flush_all(&mut self, now: Instant) -> Vec<Summary<E, S>> {
        let Some(started) = self.started.take() else {
            return Vec::new();
        };
        let interval = now.saturating_duration_since(started);
        let keyed = self.counts.drain().map(|((event, source), total)| Summary {
            event,
            source: Some(source),
            count: total - 1,
            total,
            interval,
        });
        let overflow = self.overflow.drain().map(|(event, total)| Summary {
            event,
            source: None,
            count: total - 1,
            total,
            interval,
        });
        keyed.chain(overflow).filter(|s| s.count > 0).collect()
    }

    /// Keys held in the current interval (the overflow bucket's included).
    pub fn keys(&self) -> usize {
        self.counts.len() + self.overflow.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Ev {
        A,
        B,
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn first_per_key_logs_the_rest_are_summed_once_per_interval() {
        let mut agg: LogAggregator<Ev> = LogAggregator::new(10 * SEC, 16);
        let t0 = Instant::now();
        assert_eq!(agg.poll_timeout(), None);
        assert!(
            agg.flush_all(t0).is_empty(),
            "nothing recorded, nothing to say"
        );

        let logged = (0..100)
            .filter(|i| agg.record(t0 + Duration::from_millis(*i), Ev::A, ip(1)))
            .count();
        assert_eq!(logged, 1, "one line at once for a hundred occurrences");
        assert!(agg.record(t0, Ev::B, ip(1)), "another event is another key");
        assert!(
            agg.record(t0, Ev::A, ip(2)),
            "another source is another key"
        );
        assert_eq!(agg.poll_timeout(), Some(t0 + 10 * SEC));

        assert!(agg.flush(t0 + 9 * SEC).is_empty(), "interval not over");
        assert!(
            !agg.record(t0 + 9 * SEC, Ev::A, ip(1)),
            "still the same interval"
        );
        let lines = agg.flush(t0 + 10 * SEC);
        assert_eq!(
            lines,
            vec![Summary {
                event: Ev::A,
                source: Some(ip(1)),
                count: 100,
                total: 101,
                interval: 10 * SEC,
            }],
            "only keys with repeats get a summary"
        );
        assert_eq!(agg.keys(), 0);
        assert_eq!(agg.poll_timeout(), None);

        // The next interval starts with the next occurrence, which logs at once again.
        assert!(agg.record(t0 + 30 * SEC, Ev::A, ip(1)));
        assert_eq!(agg.poll_timeout(), Some(t0 + 40 * SEC));
        assert!(
            agg.flush(t0 + 40 * SEC).is_empty(),
            "a single occurrence needs no summary"
        );
    }

    #[test]
    fn a_late_flush_lengthens_the_interval_and_loses_nothing() {
        let mut agg: LogAggregator<Ev> = LogAggregator::new(SEC, 16);
        let t0 = Instant::now();
        for i in 0..5u32 {
            agg.record(t0 + i * SEC, Ev::A, ip(1));
        }
        let lines = agg.flush(t0 + 5 * SEC);
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].count, lines[0].total), (4, 5));
        assert_eq!(lines[0].interval, 5 * SEC);
    }

    #[test]
    fn keys_are_bounded_and_the_rest_go_to_an_overflow_bucket_per_event() {
        let mut agg: LogAggregator<Ev> = LogAggregator::new(SEC, 4);
        let t0 = Instant::now();
        let mut logged = 0;
        for n in 0..200u8 {
            logged += usize::from(agg.record(t0, Ev::A, ip(n)));
            logged += usize::from(agg.record(t0, Ev::B, ip(n)));
        }
        // Four keys plus one overflow key per event.
        assert_eq!(logged, 4 + 2);
        assert_eq!(agg.keys(), 4 + 2);
        let lines = agg.flush(t0 + SEC);
        assert_eq!(
            lines.len(),
            2,
            "the four keys occurred once each: {lines:?}"
        );
        let total: u64 = lines.iter().map(|l| l.total).sum();
        assert_eq!(
            total,
            400 - 4,
            "every occurrence not in a key is in the overflow"
        );
        assert!(lines.iter().all(|l| l.source.is_none()));
        assert_eq!(agg.keys(), 0, "flushing frees the table");
    }

    #[test]
    fn sources_can_be_any_key_type() {
        let mut agg: LogAggregator<Ev, &'static str> = LogAggregator::new(SEC, 8);
        let t0 = Instant::now();
        assert!(agg.record(t0, Ev::A, "tenant-a"));
        assert!(!agg.record(t0, Ev::A, "tenant-a"));
        let lines = agg.flush_all(t0);
        assert_eq!(lines[0].source, Some("tenant-a"));
        assert_eq!(lines[0].interval, Duration::ZERO);
    }
}
