//! Trunk health, sans-IO: OPTIONS pings per route target and Retry-After quarantines.
//!
//! Owns: per [`TargetId`], whether it is up, its consecutive ping results, the ping in
//! flight (by branch) and when the next is due, and the end of a quarantine a 503 with
//! Retry-After asked for; the `sbc_trunk_*` metrics and the state-change log line; the
//! rows published to the admin plane's [`TrunkBoard`].
//!
//! Rules (documented in the README):
//! - Pings run only for targets of a route with `[tenants.routes.health]`; without it a
//!   target is always up (like Kamailio's dispatcher, probing is asked for). A target named
//!   by several routes is pinged once, with the settings of the first route naming it.
//! - A ping is answered when any final response comes back except 408 and 503 (a 404 or
//!   405 still proves a live SIP stack; 408 and 503 say it cannot serve now). No answer
//!   within `options_timeout_ms`, a 408/503, or a failed send counts as a failure.
//! - `down_after` consecutive failures mark an up target down; `up_after` consecutive
//!   answers mark a down target up. A target starts up.
//! - A quarantine lasts the Retry-After seconds, capped by [`MAX_QUARANTINE`].
//! - Over UDP a ping in flight is sent again by its non-INVITE client transaction (timer
//!   E: T1 doubling up to T2, every T2 after a provisional) until its final or the ping
//!   timeout, so one lost datagram is not a failed ping; over TLS and TCP it is sent once.
//!
//! Must not: build or send messages (the B2BUA builds the OPTIONS and sends it, and its
//! copies, through the same outbound path as calls; health only keeps it in flight), read
//! a clock (`now` comes in) or decide routing (see [`crate::routing`], which asks
//! [`TrunkHealth::usable`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_core::config::HealthSettings;
use sbc_core::tenant::TenantId;
use sbc_core::trunks::{TrunkBoard, TrunkStatus};
use tracing::warn;

use crate::message::SipMessage;
use crate::routing::{RouteTable, TargetId};
use crate::transaction::{ClientTransaction, TimerConfig};

/// Longest a 503's Retry-After keeps a target out: a trunk asking for an hour is more
/// likely misconfigured than down for an hour, and health checks (or the next 503) bring a
/// truly dead one back out sooner.
pub const MAX_QUARANTINE: Duration = Duration::from_secs(300);

/// One (tenant, configured URI) naming a target: a metric label pair and a board row.
#[derive(Debug, Clone)]
struct Label {
    tenant: TenantId,
    uri: String,
    priority: u16,
    weight: u16,
}

#[derive(Debug)]
struct Probe {
    settings: HealthSettings,
    /// Next ping.
    next_at: Instant,
    /// The ping in flight.
    outstanding: Option<InFlight>,
}

/// A ping sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    branch: String,
    /// When it counts as failed (the ping timeout).
    deadline: Instant,
    /// The OPTIONS, for timer E over UDP.
    msg: SipMessage,
    /// Its client transaction: retransmissions over UDP (none over TLS and TCP).
    tx: ClientTransaction,
}

#[derive(Debug)]
struct TargetHealth {
    labels: Vec<Label>,
    probe: Option<Probe>,
    up: bool,
    last_change: Option<Instant>,
    failures: u32,
    successes: u32,
    quarantined_until: Option<Instant>,
}

impl TargetHealth {
    fn new() -> Self {
        TargetHealth {
            labels: Vec::new(),
            probe: None,
            up: true,
            last_change: None,
            failures: 0,
            successes: 0,
            quarantined_until: None,
        }
    }
}

/// A ping result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    Failed,
}

/// Every target's health.
#[derive(Debug, Default)]
pub struct TrunkHealth {
    targets: HashMap<TargetId, TargetHealth>,
    by_branch: HashMap<String, TargetId>,
    board: Option<Arc<TrunkBoard>>,
    /// Wall-clock anchor for the board's times.
    wall: Option<crate::b2bua::WallClock>,
}

impl TrunkHealth {
    /// Publish to `board`, with display times from `wall`.
    pub fn set_board(&mut self, board: Arc<TrunkBoard>, wall: crate::b2bua::WallClock) {
        self.board = Some(board);
        self.wall = Some(wall);
    }

    /// Take the targets of `routes` (start or reload): targets kept keep their state,
    /// new ones start up with a ping due at once, gone ones are forgotten.
    pub fn install(&mut self, routes: &RouteTable, now: Instant) {
        let mut next: HashMap<TargetId, TargetHealth> = HashMap::new();
        for (tenant, route) in routes.iter() {
            for t in &route.targets {
                let h = next.entry(t.target).or_insert_with(|| {
                    let mut h = self
                        .targets
                        .remove(&t.target)
                        .unwrap_or_else(TargetHealth::new);
                    h.labels.clear();
                    let old = h.probe.take();
                    h.probe = route.health.map(|settings| Probe {
                        settings,
                        next_at: old.as_ref().map_or(now, |p| p.next_at),
                        outstanding: old.and_then(|p| p.outstanding),
                    });
                    if h.probe.is_none() && !h.up {
                        // No checks any more: nothing would bring it back.
                        h.up = true;
                        h.last_change = Some(now);
                    }
                    h
                });
                if h.probe.is_none() {
                    if let Some(settings) = route.health {
                        h.probe = Some(Probe {
                            settings,
                            next_at: now,
                            outstanding: None,
                        });
                    }
                }
                h.labels.push(Label {
                    tenant: tenant.clone(),
                    uri: t.uri.clone(),
                    priority: t.priority,
                    weight: t.weight,
                });
            }
        }
        self.targets = next;
        let targets = &self.targets;
        self.by_branch.retain(|_, t| targets.contains_key(t));
        for h in self.targets.values() {
            for l in &h.labels {
                metrics::gauge!("sbc_trunk_up", "tenant" => l.tenant.to_string(), "target" => l.uri.clone())
                    .set(if h.up { 1.0 } else { 0.0 });
            }
        }
        self.publish();
    }

    /// True if new calls may try `target` at `now`: up and not quarantined.
    pub fn usable(&self, target: TargetId, now: Instant) -> bool {
        self.targets
            .get(&target)
            .is_none_or(|h| h.up && h.quarantined_until.is_none_or(|u| now >= u))
    }

    /// A 503 from `target` asked for `retry_after`: keep new calls off it that long
    /// (capped by [`MAX_QUARANTINE`]).
    pub fn quarantine(&mut self, target: TargetId, retry_after: Duration, now: Instant) {
        let Some(h) = self.targets.get_mut(&target) else {
            return;
        };
        let until = now + retry_after.min(MAX_QUARANTINE);
        h.quarantined_until = Some(h.quarantined_until.map_or(until, |u| u.max(until)));
        for l in &h.labels {
            metrics::counter!("sbc_trunk_quarantines_total", "tenant" => l.tenant.to_string(), "target" => l.uri.clone()).increment(1);
        }
        self.publish();
    }

    /// Earliest instant a ping is due or one in flight times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|h| h.probe.as_ref())
            .map(|p| match &p.outstanding {
                Some(f) => {
                    f.tx.poll_timeout()
                        .map_or(f.deadline, |t| t.min(f.deadline))
                }
                None => p.next_at,
            })
            .min()
    }

    /// Time out pings in flight and return the targets whose next ping is due at `now`;
    /// the caller sends each one and reports its branch with [`TrunkHealth::sent`].
    pub fn due(&mut self, now: Instant) -> Vec<TargetId> {
        let timed_out: Vec<String> = self
            .targets
            .values()
            .filter_map(|h| h.probe.as_ref()?.outstanding.as_ref())
            .filter(|f| now >= f.deadline)
            .map(|f| f.branch.clone())
            .collect();
        for b in timed_out {
            self.finish(&b, Outcome::Failed, now);
        }
        let mut due: Vec<TargetId> = self
            .targets
            .iter()
            .filter(|(_, h)| {
                h.probe
                    .as_ref()
                    .is_some_and(|p| p.outstanding.is_none() && now >= p.next_at)
            })
            .map(|(id, _)| *id)
            .collect();
        due.sort();
        due
    }

    /// A ping `msg` to `target` left with `branch` at `now`; `tx` is its client
    /// transaction (made for the target's transport: it says when to send it again).
    pub fn sent(
        &mut self,
        target: TargetId,
        branch: String,
        msg: SipMessage,
        tx: ClientTransaction,
        now: Instant,
    ) {
        let Some(p) = self.targets.get_mut(&target).and_then(|h| h.probe.as_mut()) else {
            return;
        };
        let deadline = now + p.settings.timeout;
        p.next_at = now + p.settings.interval;
        p.outstanding = Some(InFlight {
            branch: branch.clone(),
            deadline,
            msg,
            tx,
        });
        self.by_branch.insert(branch, target);
    }

    /// Timer E of the pings in flight: the ones to send again at `now` (over UDP only).
    /// Call after [`TrunkHealth::due`], which ends the pings past their timeout.
    pub fn retransmissions(&mut self, now: Instant) -> Vec<(TargetId, SipMessage)> {
        let mut out = Vec::new();
        for (id, h) in &mut self.targets {
            let Some(f) = h.probe.as_mut().and_then(|p| p.outstanding.as_mut()) else {
                continue;
            };
            // Timer F (64·T1) only stops the copies; the ping timeout decides the result.
            f.tx.handle_timeout(now);
            if f.tx.retransmit_due(now) {
                out.push((*id, f.msg.clone()));
            }
        }
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// The target a ping with this branch went to, if it is one of ours in flight.
    pub fn target_of(&self, branch: &str) -> Option<TargetId> {
        self.by_branch.get(branch).copied()
    }

    /// A response to the ping with `branch`; a provisional only slows its timer E to T2
    /// (the final decides).
    pub fn on_response(&mut self, branch: &str, code: u16, now: Instant, timers: &TimerConfig) {
        if code < 200 {
            if let Some(f) = self
                .by_branch
                .get(branch)
                .and_then(|t| self.targets.get_mut(t))
                .and_then(|h| h.probe.as_mut()?.outstanding.as_mut())
                .filter(|f| f.branch == branch)
            {
                f.tx.handle_input(now, code, timers);
            }
            return;
        }
        let outcome = if code == 408 || code == 503 {
            Outcome::Failed
        } else {
            Outcome::Answered
        };
        self.finish(branch, outcome, now);
    }

    /// The ping with `branch` could not be sent.
    pub fn on_send_failed(&mut self, branch: &str, now: Instant) {
        self.finish(branch, Outcome::Failed, now);
    }

    fn finish(&mut self, branch: &str, outcome: Outcome, now: Instant) {
        let Some(target) = self.by_branch.remove(branch) else {
            return;
        };
        let Some(h) = self.targets.get_mut(&target) else {
            return;
        };
        let Some(p) = h.probe.as_mut() else {
            return;
        };
        if p.outstanding.as_ref().map(|f| f.branch.as_str()) != Some(branch) {
            return;
        }
        p.outstanding = None;
        let settings = p.settings;
        let changed = match outcome {
            Outcome::Answered => {
                h.failures = 0;
                h.successes = h.successes.saturating_add(1);
                !h.up && h.successes >= settings.up_after
            }
            Outcome::Failed => {
                h.successes = 0;
                h.failures = h.failures.saturating_add(1);
                h.up && h.failures >= settings.down_after
            }
        };
        if changed {
            h.up = !h.up;
            h.last_change = Some(now);
            let state = if h.up { "up" } else { "down" };
            for l in &h.labels {
                metrics::gauge!("sbc_trunk_up", "tenant" => l.tenant.to_string(), "target" => l.uri.clone())
                    .set(if h.up { 1.0 } else { 0.0 });
                metrics::counter!("sbc_trunk_state_changes_total", "tenant" => l.tenant.to_string(), "target" => l.uri.clone(), "state" => state).increment(1);
                warn!(
                    event = "trunk_state_changed",
                    tenant = %l.tenant,
                    target = %l.uri,
                    state,
                    consecutive_failures = h.failures,
                    "route target is {state} (OPTIONS health check)"
                );
            }
        }
        self.publish();
    }

    /// Replace the admin plane's rows.
    fn publish(&self) {
        let (Some(board), Some(wall)) = (&self.board, &self.wall) else {
            return;
        };
        let mut rows = Vec::new();
        for h in self.targets.values() {
            for l in &h.labels {
                rows.push(TrunkStatus {
                    tenant: l.tenant.clone(),
                    target: l.uri.clone(),
                    priority: l.priority,
                    weight: l.weight,
                    up: h.up,
                    checked: h.probe.is_some(),
                    last_change: h.last_change.map(|t| wall.wall(t)),
                    consecutive_failures: h.failures,
                    quarantined_until: h.quarantined_until.map(|t| wall.wall(t)),
                });
            }
        }
        rows.sort_by(|a, b| {
            (a.tenant.as_str(), a.priority, &a.target).cmp(&(
                b.tenant.as_str(),
                b.priority,
                &b.target,
            ))
        });
        board.publish(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RouteEntry;

    fn table(health: Option<HealthSettings>) -> RouteTable {
        let mut t = RouteTable::new();
        let mut r = RouteEntry::single("", TargetId(0), "pbx:5061");
        r.health = health;
        t.insert(TenantId::from("acme"), r);
        t
    }

    fn options() -> SipMessage {
        SipMessage::new_request(crate::message::Method::Options, "sips:pbx:5061")
    }

    fn tls_tx(now: Instant) -> ClientTransaction {
        ClientTransaction::new(
            crate::transaction::TxKind::NonInvite,
            now,
            &TimerConfig::default(),
        )
    }

    fn settings() -> HealthSettings {
        HealthSettings {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            down_after: 2,
            up_after: 2,
        }
    }

    #[test]
    fn down_after_n_failures_up_after_m_answers() {
        let t0 = Instant::now();
        let mut h = TrunkHealth::default();
        h.install(&table(Some(settings())), t0);
        assert_eq!(h.poll_timeout(), Some(t0), "the first ping is due at once");
        let mut now = t0;
        let ping = |h: &mut TrunkHealth, now: Instant, n: u32| {
            assert_eq!(h.due(now), vec![TargetId(0)]);
            let b = format!("b{n}");
            h.sent(TargetId(0), b.clone(), options(), tls_tx(now), now);
            assert!(h.due(now).is_empty(), "one ping in flight at a time");
            b
        };
        // Two timeouts: down.
        for n in 0..2 {
            ping(&mut h, now, n);
            now += Duration::from_secs(1);
            assert_eq!(h.poll_timeout(), Some(now));
            assert!(h.due(now).is_empty());
            now += Duration::from_secs(9);
        }
        assert!(!h.usable(TargetId(0), now));
        // A 503 answer is still a failure; then two answers: up.
        let b = ping(&mut h, now, 2);
        h.on_response(&b, 503, now, &TimerConfig::default());
        assert!(!h.usable(TargetId(0), now));
        now += Duration::from_secs(10);
        let b = ping(&mut h, now, 3);
        h.on_response(&b, 100, now, &TimerConfig::default());
        h.on_response(&b, 404, now, &TimerConfig::default());
        assert!(!h.usable(TargetId(0), now), "one answer is not enough");
        now += Duration::from_secs(10);
        let b = ping(&mut h, now, 4);
        h.on_response(&b, 200, now, &TimerConfig::default());
        assert!(h.usable(TargetId(0), now));
        // A late answer to an old ping changes nothing.
        h.on_response("b0", 200, now, &TimerConfig::default());
    }

    #[test]
    fn udp_ping_is_sent_again_by_timer_e_until_its_timeout_and_a_late_answer_counts() {
        let t0 = Instant::now();
        let timers = TimerConfig::default();
        let mut h = TrunkHealth::default();
        h.install(&table(Some(settings())), t0);
        let ms = Duration::from_millis;
        let udp = |now| {
            ClientTransaction::new_over(crate::transaction::TxKind::NonInvite, now, &timers, false)
        };
        assert_eq!(h.due(t0), vec![TargetId(0)]);
        h.sent(TargetId(0), "b0".into(), options(), udp(t0), t0);
        assert_eq!(h.poll_timeout(), Some(t0 + ms(500)));
        assert!(h.retransmissions(t0 + ms(499)).is_empty());
        assert_eq!(h.retransmissions(t0 + ms(500)).len(), 1);
        assert_eq!(
            h.poll_timeout(),
            Some(t0 + ms(1000)),
            "the ping timeout first"
        );
        // The answer to a copy, before the timeout: answered.
        h.on_response("b0", 200, t0 + ms(900), &timers);
        assert!(h.usable(TargetId(0), t0 + ms(900)));
        assert_eq!(h.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        // The next one is never answered: copies until the timeout, then a failure.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(h.due(t1), vec![TargetId(0)]);
        h.sent(TargetId(0), "b1".into(), options(), udp(t1), t1);
        assert_eq!(h.retransmissions(t1 + ms(500)).len(), 1);
        assert!(h.due(t1 + ms(1000)).is_empty());
        assert!(
            h.retransmissions(t1 + ms(1500)).is_empty(),
            "timed out: no copies"
        );
        assert_eq!(h.poll_timeout(), Some(t1 + Duration::from_secs(10)));
        // Over TLS: never sent again.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(h.due(t2), vec![TargetId(0)]);
        h.sent(TargetId(0), "b2".into(), options(), tls_tx(t2), t2);
        assert_eq!(h.poll_timeout(), Some(t2 + ms(1000)));
        assert!(h.retransmissions(t2 + ms(999)).is_empty());
    }

    #[test]
    fn quarantine_is_capped_and_ends() {
        let t0 = Instant::now();
        let mut h = TrunkHealth::default();
        h.install(&table(None), t0);
        assert!(h.due(t0).is_empty(), "no pings without a health section");
        h.quarantine(TargetId(0), Duration::from_secs(3600), t0);
        assert!(!h.usable(TargetId(0), t0 + MAX_QUARANTINE - Duration::from_secs(1)));
        assert!(h.usable(TargetId(0), t0 + MAX_QUARANTINE));
    }
}
