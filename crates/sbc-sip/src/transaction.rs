//! RFC 3261 §17 transaction state machines, sans-IO.
//!
//! Owns: the client and server transaction states for INVITE and non-INVITE, and their
//! timers. Must not: touch sockets or read the clock (`now` is always passed in).
//!
//! One layer for every transport: a transaction is made for a reliable transport (TLS,
//! TCP) or an unreliable one (UDP), and only the timers differ. Over TLS and TCP the
//! retransmission timers A, E and G never run and the wait timers D, J and K are zero
//! (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2). Over UDP a client retransmits its
//! request (timer A for INVITE, doubling from T1 until a response; timer E for the others,
//! doubling up to T2, then every T2 once a provisional arrived) and stays Completed for
//! timer D (32 s, INVITE: re-ACKs retransmitted finals) or K (T4, non-INVITE: absorbs
//! them); a server retransmits its non-2xx final to INVITE until the ACK (timer G, T1
//! doubling up to T2) and absorbs retransmitted non-INVITE requests for timer J (64·T1).
//! On every transport: timer B (INVITE client), timer F (non-INVITE client), timer H
//! (INVITE server waiting for the ACK of a non-2xx final), timer L (RFC 6026 "Accepted"
//! state absorbing 2xx retransmissions), plus the gateway's own maximum ringing time for
//! INVITE client transactions. A transaction only says *when* to retransmit; its owner
//! keeps the message and sends it.

use std::time::{Duration, Instant};

/// RFC 3261 T2: the cap of non-INVITE request and INVITE response retransmission
/// intervals (Table 4).
pub const T2: Duration = Duration::from_secs(4);
/// RFC 3261 T4: how long a message may stay in the network; timer K over UDP (Table 4).
pub const T4: Duration = Duration::from_secs(5);
/// RFC 3261 timer D over UDP: "at least 32 seconds" (Table 4).
pub const TIMER_D: Duration = Duration::from_secs(32);

/// The retransmission schedule of one message over UDP: when next, and the interval.
/// Transactions keep theirs; the B2BUA keeps one for what it sends again outside a
/// transaction pair (a reliable provisional until its PRACK, RFC 3262 §3).
#[derive(Debug, Clone, Copy)]
pub struct Retransmit {
    at: Instant,
    interval: Duration,
}

impl Retransmit {
    /// A message sent at `now`: the first copy goes T1 later.
    pub fn starting(now: Instant, t1: Duration) -> Self {
        Retransmit {
            at: now + t1,
            interval: t1,
        }
    }

    /// When the next copy is due.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// True if a copy is due at `now`; the schedule then moves on with the interval
    /// doubled (capped at `cap` when given: T2 for timers E and G).
    pub fn due(&mut self, now: Instant, cap: Option<Duration>) -> bool {
        if now < self.at {
            return false;
        }
        let doubled = self.interval.saturating_mul(2);
        self.interval = cap.map_or(doubled, |c| doubled.min(c));
        self.at = now + self.interval;
        true
    }
}

/// Timer values shared by all transactions of a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RFC 3261 T1, the round-trip estimate (default 500 ms).
    pub t1: Duration,
    /// Longest time an INVITE may go without a final response before the gateway gives up
    /// with CANCEL downstream and 408 upstream.
    pub max_ringing: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            max_ringing: Duration::from_secs(180),
        }
    }
}

impl TimerConfig {
    /// 64·T1: timers B, F, H and L (RFC 3261 Table 4, RFC 6026 §8.4).
    pub fn t64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Whether a transaction carries INVITE or another method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// INVITE transactions (ACK for non-2xx belongs to them).
    Invite,
    /// Every other method except ACK.
    NonInvite,
}

/// Client transaction state (RFC 3261 Figures 5 and 6, RFC 6026 Figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Request sent, nothing heard ("Calling" for INVITE, "Trying" otherwise).
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// UDP only: a non-2xx final arrived; retransmissions of it are absorbed (INVITE:
    /// answered with the ACK again) until timer D or K.
    Completed,
    /// INVITE only: a 2xx arrived; further 2xx retransmissions are passed up (RFC 6026).
    Accepted,
    /// Finished: a final response arrived or a timer fired.
    Terminated,
}

/// What the transaction user should do with a response handed to the client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDisposition {
    /// Pass the response up (relay it).
    Pass,
    /// INVITE only: a non-2xx final; pass it up, and the client transaction's owner sends
    /// the hop-by-hop ACK (RFC 3261 §17.1.1.3).
    PassAndAck,
    /// A duplicate or late response; drop it (counted by the caller).
    Absorb,
    /// INVITE over UDP: a retransmission of the non-2xx final already passed up; send the
    /// ACK again, pass nothing up (RFC 3261 §17.1.1.2).
    AckAgain,
}

/// Why a client transaction gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    /// Timer B or F: no final response within 64·T1 and nothing provisional heard
    /// (INVITE) / no final at all (non-INVITE). The caller answers 408.
    NoResponse,
    /// INVITE only: provisional responses arrived but no final within the maximum ringing
    /// time. The caller sends CANCEL downstream and 408 upstream.
    RingingTooLong,
}

/// One client transaction.
#[derive(Debug, Clone)]
pub struct ClientTransaction {
    kind: TxKind,
    state: ClientState,
    /// Timer B/F deadline while Calling; timer L deadline while Accepted.
    deadline: Option<Instant>,
    /// INVITE only: end of the maximum ringing time.
    ringing_deadline: Option<Instant>,
    /// 64·T1, kept for the wait after the ringing limit.
    t64: Duration,
    /// Over UDP: true. Over TLS and TCP: false.
    unreliable: bool,
    /// Over UDP, while the request is retransmitted: timer A or E.
    retransmit: Option<Retransmit>,
}

impl ClientTransaction {
    /// A transaction whose request has just been sent at `now` over a reliable transport.
    pub fn new(kind: TxKind, now: Instant, timers: &TimerConfig) -> Self {
        Self::new_over(kind, now, timers, true)
    }

    /// A transaction whose request has just been sent at `now` over a reliable transport
    /// (`reliable`: TLS, TCP) or UDP (timers A/E retransmit it, D/K absorb late finals).
    pub fn new_over(kind: TxKind, now: Instant, timers: &TimerConfig, reliable: bool) -> Self {
        let ringing_deadline = match kind {
            TxKind::Invite => Some(now + timers.max_ringing),
            TxKind::NonInvite => None,
        };
        Self {
            kind,
            state: ClientState::Calling,
            deadline: Some(now + timers.t64()),
            ringing_deadline,
            t64: timers.t64(),
            unreliable: !reliable,
            retransmit: (!reliable).then_some(Retransmit {
                at: now + timers.t1,
                interval: timers.t1,
            }),
        }
    }

    /// Timer A or E: true if the request is to be sent again now (the schedule then moves
    /// on: INVITE doubling, non-INVITE doubling up to T2). Never true over TLS or TCP, nor
    /// once a response stopped the retransmissions.
    pub fn retransmit_due(&mut self, now: Instant) -> bool {
        let Some(r) = self.retransmit.as_mut() else {
            return false;
        };
        if now < r.at {
            return false;
        }
        r.interval = match self.kind {
            TxKind::Invite => r.interval.saturating_mul(2),
            TxKind::NonInvite => r.interval.saturating_mul(2).min(T2),
        };
        r.at = now + r.interval;
        true
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// True once a provisional response was seen (CANCEL may be sent, RFC 3261 §9.1).
    pub fn heard_provisional(&self) -> bool {
        self.state != ClientState::Calling
    }

    /// A response with status `code` arrived for this transaction.
    pub fn handle_input(
        &mut self,
        now: Instant,
        code: u16,
        timers: &TimerConfig,
    ) -> ClientDisposition {
        let provisional = code < 200;
        match (self.kind, self.state) {
            (_, ClientState::Terminated) => ClientDisposition::Absorb,
            (TxKind::Invite, ClientState::Completed) if !provisional => ClientDisposition::AckAgain,
            (_, ClientState::Completed) => ClientDisposition::Absorb,
            (TxKind::Invite, ClientState::Accepted) => {
                // RFC 6026 §8.4: 2xx retransmissions (possibly from other forks) go up so
                // the dialog layer can ACK them; anything else is absorbed.
                if (200..300).contains(&code) {
                    ClientDisposition::Pass
                } else {
                    ClientDisposition::Absorb
                }
            }
            (_, ClientState::Calling | ClientState::Proceeding) if provisional => {
                if self.kind == TxKind::NonInvite {
                    // Timer F keeps running for non-INVITE (RFC 3261 §17.1.2.2), and over
                    // UDP timer E goes on every T2.
                    if let Some(r) = self.retransmit.as_mut() {
                        r.interval = T2;
                        r.at = now + T2;
                    }
                } else {
                    // Timer A stops once something was heard (RFC 3261 §17.1.1.2).
                    self.retransmit = None;
                    if self.state == ClientState::Calling {
                        // Timer B stops too; the ringing limit remains. Later provisionals
                        // leave the deadline alone: after a CANCEL or the ringing limit it
                        // is the 64·T1 wait for the final, which a callee that keeps
                        // ringing must not stop (else the call is held forever).
                        self.deadline = None;
                    }
                }
                self.state = ClientState::Proceeding;
                ClientDisposition::Pass
            }
            (TxKind::Invite, _) if (200..300).contains(&code) => {
                self.state = ClientState::Accepted;
                self.ringing_deadline = None;
                self.retransmit = None;
                self.deadline = Some(now + timers.t64());
                ClientDisposition::Pass
            }
            (TxKind::Invite, _) => {
                // Non-2xx final: timer D is zero over a reliable transport.
                self.complete(now, TIMER_D);
                ClientDisposition::PassAndAck
            }
            (TxKind::NonInvite, _) => {
                // Timer K is zero over a reliable transport.
                self.complete(now, T4);
                ClientDisposition::Pass
            }
        }
    }

    /// Earliest instant at which `handle_timeout` or `retransmit_due` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.deadline,
            self.ringing_deadline,
            self.retransmit.map(|r| r.at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A final response ended the exchange: over UDP stay Completed for `wait` (timer D
    /// or K) to absorb its retransmissions; over TLS and TCP end now.
    fn complete(&mut self, now: Instant, wait: Duration) {
        if self.unreliable {
            self.state = ClientState::Completed;
            self.deadline = Some(now + wait);
            self.ringing_deadline = None;
            self.retransmit = None;
        } else {
            self.terminate();
        }
    }

    /// Fire expired timers. Returns why the transaction gave up, if it did and the caller
    /// must answer for it; a silent end (timer L) returns `None` and terminates.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<ClientTimeout> {
        if self.state == ClientState::Terminated {
            return None;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            let was = self.state;
            self.terminate();
            return match was {
                ClientState::Accepted | ClientState::Completed => None,
                _ => Some(ClientTimeout::NoResponse),
            };
        }
        if self.ringing_deadline.is_some_and(|d| now >= d) {
            // The owner CANCELs; keep waiting up to 64·T1 for the final response (487) so
            // it can be acknowledged, then give up silently with `NoResponse`.
            self.ringing_deadline = None;
            self.deadline = Some(now + self.t64);
            return Some(ClientTimeout::RingingTooLong);
        }
        None
    }

    /// INVITE only: a CANCEL went out. The final response (487, or a 2xx that crossed it)
    /// must arrive within 64·T1; the ringing limit no longer applies.
    pub fn cancel_sent(&mut self, now: Instant) {
        if matches!(self.state, ClientState::Calling | ClientState::Proceeding) {
            self.ringing_deadline = None;
            self.deadline = Some(now + self.t64);
        }
    }

    /// The request never left (connect or write failed): end the transaction.
    pub fn abort(&mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.deadline = None;
        self.ringing_deadline = None;
        self.retransmit = None;
    }
}

/// Server transaction state (RFC 3261 Figures 7 and 8, RFC 6026 Figure 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Request received, no final response sent yet.
    Proceeding,
    /// A final was sent: INVITE (non-2xx) waits for the ACK (timer H; over UDP the final
    /// is retransmitted, timer G); non-INVITE over UDP absorbs retransmitted requests
    /// (timer J).
    Completed,
    /// INVITE only: a 2xx was sent; the ACK is end to end and not ours (timer L).
    Accepted,
    /// Finished.
    Terminated,
}

/// What to do with a request that matched an existing server transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerDisposition {
    /// A retransmission: resend the last response sent, if any.
    Retransmit,
    /// The ACK for our non-2xx final: absorbed, transaction done.
    AckAbsorbed,
    /// Nothing to do.
    Absorb,
}

/// One server transaction.
#[derive(Debug, Clone)]
pub struct ServerTransaction {
    kind: TxKind,
    state: ServerState,
    deadline: Option<Instant>,
    /// Over UDP: true.
    unreliable: bool,
    /// Over UDP, a non-2xx final to INVITE awaiting its ACK: timer G.
    retransmit: Option<Retransmit>,
}

impl ServerTransaction {
    /// A transaction for a request received over a reliable transport.
    pub fn new(kind: TxKind) -> Self {
        Self::new_over(kind, true)
    }

    /// A transaction for a request received over a reliable transport (`reliable`: TLS,
    /// TCP) or UDP.
    pub fn new_over(kind: TxKind, reliable: bool) -> Self {
        Self {
            kind,
            state: ServerState::Proceeding,
            deadline: None,
            unreliable: !reliable,
            retransmit: None,
        }
    }

    /// A server side that is already over: the place of the caller's transaction in a
    /// try the call has left for another target (the caller's transaction moved on with
    /// the call; this try only winds down its client side).
    pub fn none(kind: TxKind) -> Self {
        Self {
            kind,
            state: ServerState::Terminated,
            deadline: None,
            unreliable: false,
            retransmit: None,
        }
    }

    /// Timer G: true if the non-2xx final is to be sent again now (T1 doubling up to T2,
    /// until the ACK or timer H). Never true over TLS or TCP.
    pub fn retransmit_due(&mut self, now: Instant) -> bool {
        let Some(r) = self.retransmit.as_mut() else {
            return false;
        };
        if self.state != ServerState::Completed || now < r.at {
            return false;
        }
        r.interval = r.interval.saturating_mul(2).min(T2);
        r.at = now + r.interval;
        true
    }

    /// Current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// True while no final response was sent.
    pub fn awaiting_final(&self) -> bool {
        self.state == ServerState::Proceeding
    }

    /// The transaction user sends a response with status `code`. Returns false if a final
    /// response was already sent (the response must not go out).
    pub fn send_response(&mut self, now: Instant, code: u16, timers: &TimerConfig) -> bool {
        if self.state != ServerState::Proceeding {
            return false;
        }
        if code < 200 {
            return true;
        }
        match self.kind {
            TxKind::Invite if code < 300 => {
                self.state = ServerState::Accepted;
                self.deadline = Some(now + timers.t64());
            }
            TxKind::Invite => {
                self.state = ServerState::Completed;
                self.deadline = Some(now + timers.t64());
                if self.unreliable {
                    self.retransmit = Some(Retransmit {
                        at: now + timers.t1,
                        interval: timers.t1,
                    });
                }
            }
            TxKind::NonInvite if self.unreliable => {
                // Timer J: retransmitted requests get the final again.
                self.state = ServerState::Completed;
                self.deadline = Some(now + timers.t64());
            }
            TxKind::NonInvite => {
                // Timer J is zero over a reliable transport.
                self.state = ServerState::Terminated;
            }
        }
        true
    }

    /// A request matching this transaction arrived again (`is_ack` for an ACK matching an
    /// INVITE transaction by branch).
    pub fn handle_input(&mut self, is_ack: bool) -> ServerDisposition {
        match (self.state, is_ack) {
            (ServerState::Completed, true) if self.kind == TxKind::Invite => {
                // Timer I (T4 over UDP) is not kept: a retransmitted ACK then matches no
                // transaction and is dropped, which is all timer I would do with it.
                self.state = ServerState::Terminated;
                self.deadline = None;
                self.retransmit = None;
                ServerDisposition::AckAbsorbed
            }
            (_, true) | (ServerState::Terminated, false) => ServerDisposition::Absorb,
            (_, false) => ServerDisposition::Retransmit,
        }
    }

    /// Earliest instant at which `handle_timeout` or `retransmit_due` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline, self.retransmit.map(|r| r.at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire expired timers. Returns true if timer H fired (the ACK for a non-2xx final never
    /// came), which the caller logs and counts.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if now >= d => {
                let missed_ack =
                    self.state == ServerState::Completed && self.kind == TxKind::Invite;
                self.state = ServerState::Terminated;
                self.deadline = None;
                self.retransmit = None;
                missed_ack
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers() -> TimerConfig {
        TimerConfig {
            t1: Duration::from_millis(500),
            max_ringing: Duration::from_secs(60),
        }
    }

    #[test]
    fn invite_client_timer_b_fires_after_64_t1_without_any_response() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(TxKind::Invite, t0, &t);
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        assert_eq!(tx.handle_timeout(t0 + Duration::from_secs(31)), None);
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(32)),
            Some(ClientTimeout::NoResponse)
        );
        assert_eq!(tx.state(), ClientState::Terminated);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn invite_client_provisional_stops_timer_b_but_ringing_limit_fires() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(TxKind::Invite, t0, &t);
        assert!(!tx.heard_provisional());
        assert_eq!(
            tx.handle_input(t0 + Duration::from_secs(1), 180, &t),
            ClientDisposition::Pass
        );
        assert!(tx.heard_provisional());
        assert_eq!(tx.handle_timeout(t0 + Duration::from_secs(40)), None);
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(60)),
            Some(ClientTimeout::RingingTooLong)
        );
        // Then it waits 64·T1 for the 487 that answers the CANCEL.
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(92)));
        assert_eq!(
            tx.handle_input(t0 + Duration::from_secs(61), 487, &t),
            ClientDisposition::PassAndAck
        );
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn invite_client_non_2xx_final_asks_for_ack_and_absorbs_duplicates() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(TxKind::Invite, t0, &t);
        assert_eq!(tx.handle_input(t0, 486, &t), ClientDisposition::PassAndAck);
        assert_eq!(tx.state(), ClientState::Terminated);
        assert_eq!(tx.handle_input(t0, 486, &t), ClientDisposition::Absorb);
    }

    #[test]
    fn invite_client_2xx_enters_accepted_and_passes_retransmitted_2xx() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(TxKind::Invite, t0, &t);
        assert_eq!(tx.handle_input(t0, 200, &t), ClientDisposition::Pass);
        assert_eq!(tx.state(), ClientState::Accepted);
        assert_eq!(tx.handle_input(t0, 200, &t), ClientDisposition::Pass);
        assert_eq!(tx.handle_input(t0, 180, &t), ClientDisposition::Absorb);
        // Timer L ends it silently.
        assert_eq!(tx.handle_timeout(t0 + Duration::from_secs(32)), None);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn invite_client_after_cancel_waits_64_t1_then_gives_up_silently_to_the_caller() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(TxKind::Invite, t0, &t);
        tx.handle_input(t0, 180, &t);
        tx.cancel_sent(t0 + Duration::from_secs(5));
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(37)));
        // A callee that keeps ringing (a reliable 180, a 183) does not stop the wait.
        tx.handle_input(t0 + Duration::from_secs(6), 183, &t);
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(37)));
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(37)),
            Some(ClientTimeout::NoResponse)
        );
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn non_invite_client_timer_f_runs_through_provisionals() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(TxKind::NonInvite, t0, &t);
        assert_eq!(tx.handle_input(t0, 100, &t), ClientDisposition::Pass);
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(32)),
            Some(ClientTimeout::NoResponse)
        );
        let mut tx = ClientTransaction::new(TxKind::NonInvite, t0, &t);
        assert_eq!(tx.handle_input(t0, 200, &t), ClientDisposition::Pass);
        assert_eq!(tx.state(), ClientState::Terminated);
        assert_eq!(tx.handle_input(t0, 200, &t), ClientDisposition::Absorb);
    }

    #[test]
    fn invite_server_waits_for_ack_with_timer_h() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(TxKind::Invite);
        assert!(tx.send_response(t0, 180, &t));
        assert_eq!(tx.handle_input(false), ServerDisposition::Retransmit);
        assert!(tx.send_response(t0, 486, &t));
        assert_eq!(tx.state(), ServerState::Completed);
        assert!(
            !tx.send_response(t0, 200, &t),
            "second final must be refused"
        );
        assert!(tx.handle_timeout(t0 + Duration::from_secs(32)));
        assert_eq!(tx.state(), ServerState::Terminated);

        let mut tx = ServerTransaction::new(TxKind::Invite);
        assert!(tx.send_response(t0, 487, &t));
        assert_eq!(tx.handle_input(true), ServerDisposition::AckAbsorbed);
        assert_eq!(tx.state(), ServerState::Terminated);
        assert!(!tx.handle_timeout(t0 + Duration::from_secs(32)));
    }

    #[test]
    fn invite_server_2xx_is_accepted_then_terminates_silently() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(TxKind::Invite);
        assert!(tx.send_response(t0, 200, &t));
        assert_eq!(tx.state(), ServerState::Accepted);
        assert!(!tx.handle_timeout(t0 + Duration::from_secs(32)));
        assert_eq!(tx.state(), ServerState::Terminated);
    }

    #[test]
    fn non_invite_server_terminates_on_final() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(TxKind::NonInvite);
        assert!(tx.awaiting_final());
        assert!(tx.send_response(t0, 200, &t));
        assert_eq!(tx.state(), ServerState::Terminated);
        assert!(!tx.send_response(t0, 200, &t));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The instants at which `due` says "send again", stepping the clock to each deadline
    /// `poll` names, up to `end`.
    fn schedule(
        t0: Instant,
        end: Duration,
        mut poll: impl FnMut() -> Option<Instant>,
        mut due: impl FnMut(Instant) -> bool,
    ) -> Vec<Duration> {
        let mut out = Vec::new();
        while let Some(at) = poll() {
            if at > t0 + end {
                break;
            }
            if due(at) {
                out.push(at - t0);
            } else {
                break;
            }
        }
        out
    }

    #[test]
    fn retransmit_schedule_doubles_and_caps_when_asked() {
        let t0 = Instant::now();
        let mut free = Retransmit::starting(t0, ms(500));
        let mut capped = free;
        let mut sent = (Vec::new(), Vec::new());
        let mut now = t0;
        while now < t0 + ms(20_000) {
            now += ms(10);
            if free.due(now, None) {
                sent.0.push(now - t0);
            }
            if capped.due(now, Some(T2)) {
                sent.1.push(now - t0);
            }
        }
        assert_eq!(sent.0, [500, 1500, 3500, 7500, 15_500].map(ms));
        assert_eq!(
            sent.1,
            [500, 1500, 3500, 7500, 11_500, 15_500, 19_500].map(ms)
        );
        assert_eq!(free.at(), t0 + ms(31_500));
    }

    #[test]
    fn udp_invite_client_timer_a_doubles_until_a_provisional() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new_over(TxKind::Invite, t0, &t, false);
        let cell = std::cell::RefCell::new(&mut tx);
        let sent = schedule(
            t0,
            ms(8000),
            || cell.borrow().poll_timeout(),
            |at| cell.borrow_mut().retransmit_due(at),
        );
        assert_eq!(sent, [ms(500), ms(1500), ms(3500), ms(7500)]);
        assert_eq!(
            tx.handle_input(t0 + ms(7600), 100, &t),
            ClientDisposition::Pass
        );
        assert!(
            !tx.retransmit_due(t0 + ms(60_000)),
            "a provisional stops timer A"
        );
        // Over TLS/TCP nothing is ever retransmitted.
        let mut tls = ClientTransaction::new(TxKind::Invite, t0, &t);
        assert!(!tls.retransmit_due(t0 + ms(20_000)));
    }

    #[test]
    fn udp_non_invite_client_timer_e_caps_at_t2_and_goes_on_at_t2_after_provisional() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new_over(TxKind::NonInvite, t0, &t, false);
        let cell = std::cell::RefCell::new(&mut tx);
        let sent = schedule(
            t0,
            ms(20_000),
            || cell.borrow().poll_timeout(),
            |at| cell.borrow_mut().retransmit_due(at),
        );
        assert_eq!(
            sent,
            [500, 1500, 3500, 7500, 11_500, 15_500, 19_500].map(ms)
        );
        let now = t0 + ms(19_600);
        assert_eq!(tx.handle_input(now, 100, &t), ClientDisposition::Pass);
        assert_eq!(tx.poll_timeout(), Some(now + T2));
        assert!(tx.retransmit_due(now + T2));
        // A final stops it; over UDP the transaction waits timer K absorbing copies.
        assert_eq!(
            tx.handle_input(now + ms(4100), 200, &t),
            ClientDisposition::Pass
        );
        assert_eq!(tx.state(), ClientState::Completed);
        assert_eq!(
            tx.handle_input(now + ms(4200), 200, &t),
            ClientDisposition::Absorb
        );
        assert!(!tx.retransmit_due(now + ms(30_000)));
        assert_eq!(tx.handle_timeout(now + ms(4100) + T4), None);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn udp_invite_client_acks_retransmitted_finals_until_timer_d() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new_over(TxKind::Invite, t0, &t, false);
        assert_eq!(tx.handle_input(t0, 486, &t), ClientDisposition::PassAndAck);
        assert_eq!(tx.state(), ClientState::Completed);
        assert_eq!(
            tx.handle_input(t0 + ms(500), 486, &t),
            ClientDisposition::AckAgain
        );
        assert_eq!(
            tx.handle_input(t0 + ms(600), 180, &t),
            ClientDisposition::Absorb
        );
        assert_eq!(tx.poll_timeout(), Some(t0 + TIMER_D));
        assert_eq!(tx.handle_timeout(t0 + TIMER_D), None);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn udp_invite_server_timer_g_retransmits_the_final_until_ack() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new_over(TxKind::Invite, false);
        assert!(tx.send_response(t0, 180, &t));
        assert!(
            !tx.retransmit_due(t0 + ms(10_000)),
            "provisionals are not timer G's"
        );
        assert!(tx.send_response(t0, 486, &t));
        let cell = std::cell::RefCell::new(&mut tx);
        let sent = schedule(
            t0,
            ms(16_000),
            || cell.borrow().poll_timeout(),
            |at| cell.borrow_mut().retransmit_due(at),
        );
        assert_eq!(sent, [500, 1500, 3500, 7500, 11_500, 15_500].map(ms));
        assert_eq!(tx.handle_input(true), ServerDisposition::AckAbsorbed);
        assert!(!tx.retransmit_due(t0 + ms(30_000)), "the ACK stops timer G");
        assert_eq!(tx.state(), ServerState::Terminated);
        // Timer H still bounds it when no ACK comes.
        let mut tx = ServerTransaction::new_over(TxKind::Invite, false);
        assert!(tx.send_response(t0, 503, &t));
        assert!(tx.handle_timeout(t0 + t.t64()));
        assert!(!tx.retransmit_due(t0 + t.t64() + ms(1)));
    }

    #[test]
    fn udp_non_invite_server_absorbs_retransmissions_for_timer_j() {
        let t = timers();
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new_over(TxKind::NonInvite, false);
        assert!(tx.send_response(t0, 200, &t));
        assert_eq!(tx.state(), ServerState::Completed);
        assert_eq!(tx.handle_input(false), ServerDisposition::Retransmit);
        assert!(
            !tx.retransmit_due(t0 + ms(5000)),
            "no timer G for non-INVITE"
        );
        assert!(!tx.handle_timeout(t0 + t.t64()), "timer J is no missed ACK");
        assert_eq!(tx.state(), ServerState::Terminated);
    }
}
