//! The back-to-back user agent, sans-IO.
//!
//! Owns: calls (the caller's leg with the tenant's platform, the callee's leg with the
//! tenant's route target), the pairing of server and client transactions, CSeq mapping per
//! leg, offer/answer, and topology hiding. Split by the state each part owns:
//!
//! | file | state |
//! |---|---|
//! | `calls.rs` | the call table: [`calls::Calls`], `Call`, `Leg` (one builder of in-dialog requests) |
//! | `pairs.rs` | transaction pairs, server-transaction matching, the timer heap |
//! | `offer_answer.rs` | per-call SDP offer/answer state and its pure classifier |
//! | `reliable.rs` | reliable provisionals and PRACK (RFC 3262): per-leg RSeq, RAck mapping, UDP resends |
//! | `topology.rs` | the one place that decides which headers and bodies cross |
//! | `responses.rs` | the responses the gateway builds itself (400/505, 503, refusals) |
//! | `request_flow.rs` | what a request does (new call, in transaction, in dialog) |
//! | `response_flow.rs` | what a response does (relay upstream, learn the dialog, end calls) |
//! | `failover.rs` | a call's next try when its target fails during setup; retired tries; trunk pings |
//! | `cluster_flow.rs` | INVITEs parked while the cluster decides their admission |
//! | `replica.rs` | hot standby: the replicated dialog part of each call and when it is put |
//! | `takeover_flow.rs` | hot standby: calls installed from a dead peer's parts, caller legs waiting for adoption, fencing |
//!
//! Must not: touch sockets, TLS or the clock. Drivers feed [`Input`]s with `now` and carry
//! out the [`Output`]s from [`B2bua::poll_output`]; time ([`Instant`] and a
//! [`WallClock`] anchor), randomness (a seeded RNG) and media events come in from the
//! driver, so a test can run any call flow on a virtual clock (`tests/b2bua_harness.rs`
//! in this crate).

mod body_flow;
#[cfg(test)]
mod body_once_tests;
pub mod calls;
mod cluster_flow;
mod failover;
pub mod offer_answer;
pub mod pairs;
pub mod recording;
mod recording_flow;
mod reliable;
mod replica;
mod request_flow;
mod response_flow;
pub mod responses;
mod takeover_flow;
pub mod topology;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sbc_core::admission::Admission;
use sbc_core::cluster::{ClusterAdmission, ClusterAnswer};
use sbc_core::log_agg::{LogAggregator, DEFAULT_INTERVAL, DEFAULT_MAX_KEYS};
use sbc_core::media::{CallRef, LegSide, MediaControl, MediaEvent, MediaPolicy};
use sbc_core::redact::Redaction;
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_core::tenant::TenantId;
use tracing::{info, warn};

use crate::health::TrunkHealth;
use crate::message::{Method, SipMessage};
use crate::routing::{RouteTable, TargetId};
use crate::transaction::TimerConfig;
use crate::transport::Transport;
use calls::{CallState, Calls, Hop};
use pairs::{PairId, Pairs, Timer, Timers, BRANCH_COOKIE};

pub use reliable::MAX_UNACKED_RELIABLE;
pub use responses::{malformed_response, service_unavailable, ALLOW};
pub use takeover_flow::{CALLER_WAIT, CSEQ_RESTORE_MARGIN};

/// Identifies one transport connection (numbered by the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Requests refused for an unrecognised peer before its connection is closed: enough for a
/// platform's OPTIONS ping and a retry to see the 403, few enough that a scanner is cut off.
pub const MAX_REFUSALS_PER_CONNECTION: u32 = 5;

/// Retry-After for calls refused while draining: long enough for the platform to send its
/// retries to another gateway.
const DRAIN_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a call whose 2xx was never acknowledged ended.
const NO_ACK: &str = "no ACK for 2xx";

/// RFC 3261 T2: the cap of the 2xx retransmission interval (§13.3.1.4, Table 4).
const T2: Duration = Duration::from_secs(4);

/// What a transport connection is.
#[derive(Debug, Clone)]
pub enum ConnKind {
    /// Accepted on a listener; `tenant` is the recognition result (None: unrecognised).
    Inbound {
        /// Recognised tenant.
        tenant: Option<TenantId>,
        /// Index of the listener in the config.
        listener: usize,
    },
    /// Opened by us to a route target.
    Outbound {
        /// The target.
        target: TargetId,
    },
    /// Accepted on a listener from a route target's address and recognised as no tenant:
    /// a trunk that opened its own connection to our Via or Contact (RFC 3261 §18.2.2,
    /// or its connection to us was lost, e.g. after a takeover). It may carry in-dialog
    /// requests and responses of calls whose callee leg is on one of `targets`, and
    /// nothing else (`request_flow.rs`).
    Trunk {
        /// The targets whose address (as resolved for sending) is the source's.
        targets: Vec<TargetId>,
        /// Index of the listener in the config.
        listener: usize,
    },
}

/// Input events from the driver.
#[derive(Debug)]
pub enum Input {
    /// A connection is up (TLS handshake done).
    Connected {
        /// Connection.
        conn: ConnId,
        /// Its kind.
        kind: ConnKind,
    },
    /// A parsed message arrived.
    Message {
        /// Connection it arrived on.
        conn: ConnId,
        /// The message.
        msg: SipMessage,
    },
    /// A connection closed.
    Closed {
        /// Connection.
        conn: ConnId,
    },
    /// A message for a target could not be sent (connect, TLS handshake or write failed).
    SendFailed {
        /// Target.
        target: TargetId,
        /// The message that was not sent.
        msg: SipMessage,
    },
    /// Something media control reported (a media timeout ends the call).
    Media(MediaEvent),
    /// The cluster's admission answer for a parked INVITE.
    Cluster(ClusterAnswer),
    /// An admin plane command for a call's recording (SIPREC); the outcome shows in the
    /// [`recording::RecordingBoard`].
    Recording {
        call: CallRef,
        cmd: sbc_core::recording::RecordingCommand,
    },
}

/// Actions for the driver.
#[derive(Debug)]
pub enum Output {
    /// Send on an existing connection (dropped by the driver if it is gone).
    Send {
        /// Connection.
        conn: ConnId,
        /// Message.
        msg: SipMessage,
    },
    /// Send to a route target over a reused (or new) outbound connection.
    SendToTarget {
        /// Target.
        target: TargetId,
        /// Message.
        msg: SipMessage,
    },
    /// Close a connection.
    Close {
        /// Connection.
        conn: ConnId,
    },
}

/// The wall-clock time that goes with one [`Instant`]: the core derives display times
/// (a call's start in the admin plane) from `now` and this anchor, so it never reads a
/// clock itself.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// A monotonic instant...
    pub at: Instant,
    /// ...and the wall-clock time it was.
    pub wall: SystemTime,
}

impl WallClock {
    /// The anchor for the real clocks, read once by the driver.
    pub fn system() -> WallClock {
        WallClock {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The wall-clock time at `now`.
    pub fn wall(&self, now: Instant) -> SystemTime {
        match now.checked_duration_since(self.at) {
            Some(d) => self.wall + d,
            None => self.wall - self.at.duration_since(now),
        }
    }
}

/// Static settings of the B2BUA core.
#[derive(Debug, Clone)]
pub struct B2buaConfig {
    /// Transaction timers.
    pub timers: TimerConfig,
    /// Max-Forwards for outbound requests that arrived without one.
    pub max_forwards: u32,
    /// Advertised `host:port` per listener index, used in Via, Contact and Call-IDs.
    pub advertised: Vec<String>,
    /// Transport per listener index (missing: TLS). A leg towards a target speaks from a
    /// listener of the target's transport when there is one.
    pub transports: Vec<Transport>,
    /// How called numbers appear in logs.
    pub redaction: Redaction,
    /// Seed of the RNG that makes tags, branches and Call-IDs. The driver passes a random
    /// one; a test passes a fixed one to replay a flow.
    pub seed: u64,
    /// Wall-clock anchor for display times.
    pub wall_clock: WallClock,
}

/// Counters of the core's own life, for tests and the admin plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct B2buaStats {
    /// Calls currently held (setup or established).
    pub active_calls: usize,
    /// Transaction pairs currently held.
    pub active_relays: usize,
}

#[derive(Debug)]
struct ConnState {
    kind: ConnKind,
    refusals: u32,
    /// The connection's transport: its listener's, or its target's. Decides the
    /// retransmission timers of server transactions on it.
    transport: Transport,
}

/// Warnings a peer can trigger at will, logged through the aggregator: the first per
/// (event, tenant) and interval with its details, the rest as one summary line
/// (`sbc_core::log_agg`). Metrics still count each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CoreLog {
    /// A 2xx whose ACK never came: the call was ended with BYE.
    NoAckFor2xx,
    /// The other side never answered a request: 408.
    NoResponse,
    /// The gateway ended a call itself (media timeout, refused answer).
    Terminated,
    /// Requests from an unrecognised peer refused 403.
    UnrecognisedPeer,
    /// Requests from a trunk's own connection that are not in one of its calls: 403.
    TrunkRefused,
    /// A route target could not be reached: 503.
    TargetUnreachable,
}

impl CoreLog {
    fn as_str(self) -> &'static str {
        match self {
            CoreLog::NoAckFor2xx => "no_ack_for_2xx",
            CoreLog::NoResponse => "no_response",
            CoreLog::Terminated => "call_terminated",
            CoreLog::UnrecognisedPeer => "recognition_refused",
            CoreLog::TrunkRefused => "trunk_request_refused",
            CoreLog::TargetUnreachable => "target_unreachable",
        }
    }
}

/// Where a message goes: the pooled connection to a target, or one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dest {
    Target(TargetId),
    Conn(Option<ConnId>),
}

/// The B2BUA state machine.
#[derive(Debug)]
pub struct B2bua {
    cfg: B2buaConfig,
    routes: Arc<RouteTable>,
    admission: Arc<Admission>,
    conns: HashMap<ConnId, ConnState>,
    calls: Calls,
    pairs: Pairs,
    timers: Timers,
    outputs: VecDeque<Output>,
    rng: StdRng,
    /// Media anchoring: every SDP body goes through it. `None`: SDP passes untouched.
    media: Option<Arc<dyn MediaControl>>,
    media_policies: HashMap<TenantId, MediaPolicy>,
    /// Where calls are recorded for the admin plane.
    registry: Option<Arc<CallRegistry>>,
    /// Draining: new calls are refused 503, running ones go on.
    drain: Option<Arc<DrainState>>,
    /// Each tenant's header and body policy.
    sip_policies: HashMap<TenantId, Arc<topology::TenantPolicy>>,
    /// The policy of a tenant without one of its own.
    default_policy: Arc<topology::TenantPolicy>,
    /// Aggregated warnings, keyed by tenant (`""` for an unrecognised peer).
    logs: LogAggregator<CoreLog, String>,
    /// Route targets' health (OPTIONS pings) and Retry-After quarantines.
    health: TrunkHealth,
    /// The latest `now` seen (for work that comes without one, like a reload).
    clock: Instant,
    /// Cluster-wide admission; `None`: local admission decides alone.
    cluster: Option<Arc<dyn ClusterAdmission>>,
    /// INVITEs waiting for the cluster's answer.
    parked: cluster_flow::Parked,
    /// SIPREC recording of calls (tenants with `[tenants.recording]`).
    recordings: recording::Recordings,
    /// The hash-chained audit log's queue (recording events); `None`: log lines only.
    audit: Option<Arc<sbc_core::audit::AuditQueue>>,
    /// Hot standby: where dialog parts go (`replica.rs`); `None`: not replicated.
    replica: Option<replica::Replica>,
    /// Hot standby: restored calls' caller legs waiting for a connection.
    restored: takeover_flow::Restored,
}

impl B2bua {
    /// A B2BUA with the given settings, routes and admission control.
    pub fn new(cfg: B2buaConfig, routes: Arc<RouteTable>, admission: Arc<Admission>) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        let clock = cfg.wall_clock.at;
        let mut health = TrunkHealth::default();
        health.install(&routes, clock);
        Self {
            cfg,
            routes,
            admission,
            conns: HashMap::new(),
            calls: Calls::default(),
            pairs: Pairs::default(),
            timers: Timers::default(),
            outputs: VecDeque::new(),
            rng,
            media: None,
            media_policies: HashMap::new(),
            registry: None,
            drain: None,
            sip_policies: HashMap::new(),
            default_policy: Arc::default(),
            logs: LogAggregator::new(DEFAULT_INTERVAL, DEFAULT_MAX_KEYS),
            health,
            clock,
            cluster: None,
            parked: cluster_flow::Parked::default(),
            recordings: recording::Recordings::default(),
            audit: None,
            replica: None,
            restored: takeover_flow::Restored::default(),
        }
    }

    /// Record calls of the tenants in `recorders` (SIPREC), forking media through
    /// `media`; `board` is where the admin plane reads each call's recording status.
    pub fn set_recording(
        &mut self,
        media: Arc<dyn sbc_core::recording::RecordingMedia>,
        recorders: HashMap<TenantId, recording::Recorder>,
        board: Arc<recording::RecordingBoard>,
    ) {
        self.recordings.media = Some(media);
        self.recordings.board = board;
        self.set_recorders(recorders);
    }

    /// Hand recording events (start, stop, pause, resume, failure) to the audit log
    /// through `queue` (never waiting on it).
    pub fn set_audit(&mut self, queue: Arc<sbc_core::audit::AuditQueue>) {
        self.audit = Some(queue);
    }

    /// Replace the tenants' recording settings (config reload): calls recording now keep
    /// their settings; new calls take the new ones.
    pub fn set_recorders(&mut self, recorders: HashMap<TenantId, recording::Recorder>) {
        self.recordings.tenants = recorders
            .into_iter()
            .map(|(t, r)| (t, Arc::new(r)))
            .collect();
    }

    /// The admin plane's recording status table.
    pub fn recording_board(&self) -> Arc<recording::RecordingBoard> {
        self.recordings.board.clone()
    }

    /// Decide new calls cluster-wide too: after local admission each new INVITE is parked
    /// until `cluster` answers (as [`Input::Cluster`]; the driver installs the sink).
    pub fn set_cluster(&mut self, cluster: Arc<dyn ClusterAdmission>) {
        self.cluster = Some(cluster);
    }

    /// INVITEs waiting for the cluster's answer now.
    pub fn parked_calls(&self) -> usize {
        self.parked.len()
    }

    /// Publish route targets' health to `board` (the admin plane's `/v1/trunks`).
    pub fn set_trunk_board(&mut self, board: Arc<sbc_core::trunks::TrunkBoard>) {
        self.health.set_board(board, self.cfg.wall_clock);
        self.health.install(&self.routes, self.clock);
    }

    /// Replace the tenants' header and body policies (config reload): they apply to the
    /// next message that crosses.
    pub fn set_sip_policies(&mut self, policies: HashMap<TenantId, topology::TenantPolicy>) {
        self.sip_policies = policies
            .into_iter()
            .map(|(t, p)| (t, Arc::new(p)))
            .collect();
    }

    /// Replace the tenants' media policies (config reload); running calls keep theirs
    /// until their next offer.
    pub fn set_media_policies(&mut self, policies: HashMap<TenantId, MediaPolicy>) {
        self.media_policies = policies;
    }

    /// Record calls in `registry` and honour `drain`.
    pub fn set_admin(&mut self, registry: Arc<CallRegistry>, drain: Arc<DrainState>) {
        self.registry = Some(registry);
        self.drain = Some(drain);
    }

    /// Anchor media: every SDP body goes through `media`, with each tenant's policy.
    pub fn set_media(
        &mut self,
        media: Arc<dyn MediaControl>,
        policies: HashMap<TenantId, MediaPolicy>,
    ) {
        self.media = Some(media);
        self.media_policies = policies;
    }

    /// Swap routes and admission (config reload). Running calls keep their slots and
    /// their target; new calls take the new routes.
    pub fn reconfigure(&mut self, routes: Arc<RouteTable>, admission: Arc<Admission>) {
        self.health.install(&routes, self.clock);
        self.routes = routes;
        self.admission = admission;
    }

    /// The admission control in use.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The route table in use.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.clone()
    }

    /// The route targets that calls held now send to: a reload keeps their connectors
    /// (running calls keep their target) while new calls take the new routes.
    pub fn targets_in_use(&self) -> std::collections::HashSet<TargetId> {
        self.calls
            .iter()
            .flat_map(|c| std::iter::once(c.target).chain(c.candidates.iter().map(|x| x.target)))
            .chain(self.pairs.targets())
            .chain(self.recordings.targets())
            .collect()
    }

    /// The connections a call or transaction still needs: the callers' connections,
    /// those of server transactions, and the pooled connections of targets calls use.
    /// A UDP source (a pseudo-connection) in this set is not expired when idle: an
    /// answered call may be silent for hours and still be hung up through it.
    pub fn conns_in_use(&self) -> std::collections::HashSet<ConnId> {
        let targets = self.targets_in_use();
        let mut used: std::collections::HashSet<ConnId> =
            self.calls.iter().filter_map(|c| c.caller.conn).collect();
        used.extend(
            self.pairs
                .select(|_| true)
                .into_iter()
                .filter_map(|id| self.pairs.get(id).map(|p| p.server_conn)),
        );
        used.extend(self.conns.iter().filter_map(|(id, c)| match &c.kind {
            ConnKind::Outbound { target } if targets.contains(target) => Some(*id),
            _ => None,
        }));
        used
    }

    /// Sizes of the core's tables.
    pub fn stats(&self) -> B2buaStats {
        B2buaStats {
            active_calls: self.calls.len(),
            active_relays: self.pairs.len(),
        }
    }

    /// Next action for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Earliest instant at which [`B2bua::handle_timeout`] has something to do.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let (pairs, calls) = (&self.pairs, &self.calls);
        let recordings = &self.recordings;
        let timers = self
            .timers
            .next(|t| deadline_of(pairs, calls, t).or_else(|| recording_deadline(recordings, t)));
        [
            timers,
            self.logs.poll_timeout(),
            self.health.poll_timeout(),
            self.restored.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Feed one input.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.clock = self.clock.max(now);
        match input {
            Input::Connected { conn, kind } => {
                let transport = match &kind {
                    ConnKind::Inbound { listener, .. } | ConnKind::Trunk { listener, .. } => {
                        self.listener_transport(*listener)
                    }
                    ConnKind::Outbound { target } => self.target_transport(*target),
                };
                if let ConnKind::Inbound {
                    tenant: Some(t),
                    listener,
                } = &kind
                {
                    self.adopt_caller_legs(conn, &t.clone(), *listener);
                }
                self.conns.insert(
                    conn,
                    ConnState {
                        kind,
                        refusals: 0,
                        transport,
                    },
                );
            }
            Input::Closed { conn } => {
                if let Some(ConnState {
                    kind: ConnKind::Outbound { target },
                    ..
                }) = self.conns.remove(&conn)
                {
                    self.target_lost(now, target);
                    self.srs_target_lost(now, target);
                }
                self.abandon_setups_on(now, conn);
            }
            Input::Message { conn, msg } => {
                if msg.is_request() {
                    self.on_request(now, conn, msg);
                } else {
                    self.on_response(now, conn, msg);
                }
            }
            Input::SendFailed { target, msg } => self.on_send_failed(now, target, &msg),
            Input::Media(MediaEvent::Timeout(call)) => self.terminate(now, call, "media timeout"),
            Input::Cluster(answer) => self.on_cluster_answer(now, answer),
            Input::Recording { call, cmd } => {
                if let Err(e) = self.recording_command(now, call, cmd) {
                    info!(call = %call, command = cmd.as_str(), error = %e, "recording command refused");
                }
            }
        }
        self.replicate();
    }

    /// Fire expired timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Pair(id) => self.pair_timeout(now, id),
                Timer::Ack(call) => self.ack_timeout(now, call),
                Timer::Reliable(call) => self.reliable_timeout(now, call),
                Timer::Recording(call) => self.recording_timeout(now, call),
            }
        }
        self.restored_timeout(now);
        self.ping_targets(now);
        self.replicate();
        for s in self.logs.flush(now) {
            warn!(
                event = s.event.as_str(),
                tenant = s.source.as_deref().unwrap_or("(others)"),
                count = s.count,
                total = s.total,
                interval_secs = s.interval.as_secs(),
                "repeated: {} more in the interval",
                s.count
            );
        }
    }

    /// True if this occurrence of `event` for `tenant` is to be logged now (the first in
    /// its interval); the rest go into the interval's summary line.
    fn log_now(&mut self, now: Instant, event: CoreLog, tenant: &str) -> bool {
        self.logs.record(now, event, tenant.to_string())
    }

    // ----- shared steps -----

    /// A fresh random token (tags, branch suffixes, Call-ID parts).
    fn token(&mut self) -> String {
        format!("{:016x}", self.rng.gen::<u64>())
    }

    /// A fresh RFC 3261 branch.
    fn branch(&mut self) -> String {
        format!("{BRANCH_COOKIE}{}", self.token())
    }

    /// File a pair's current deadline in the timer heap.
    fn arm_pair(&mut self, id: PairId) {
        if let Some(d) = self.pairs.get(id).and_then(pairs::Pair::deadline) {
            self.timers.push(d, Timer::Pair(id));
        }
    }

    /// The advertised `host:port` of a listener (empty if the index is unknown).
    fn advertised(&self, listener: usize) -> &str {
        self.cfg
            .advertised
            .get(listener)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The transport of a listener.
    fn listener_transport(&self, listener: usize) -> Transport {
        self.cfg
            .transports
            .get(listener)
            .copied()
            .unwrap_or_default()
    }

    /// The transport of a route target (a running call's target a reload dropped keeps
    /// the one its call recorded).
    fn target_transport(&self, target: TargetId) -> Transport {
        self.routes
            .transport_of(target)
            .or_else(|| {
                self.calls
                    .iter()
                    .find(|c| c.target == target)
                    .map(|c| c.target_transport)
            })
            .unwrap_or_default()
    }

    /// The transport of a connection (TLS if unknown).
    fn conn_transport(&self, conn: ConnId) -> Transport {
        self.conns
            .get(&conn)
            .map(|c| c.transport)
            .unwrap_or_default()
    }

    /// How `side` of a call speaks: the transport its requests go over, and the listener
    /// whose address is its Via sent-by and Contact. The caller's leg: the listener the
    /// call came in on. The callee's leg: the target's transport, from that listener if
    /// it is of the target's transport, else the first listener that is (a UDP target is
    /// sent to from a UDP listener's socket, so its answers come back there, RFC 3261
    /// §18.2.2), else the call's listener.
    fn local_side(&self, c: &calls::Call, side: LegSide) -> (Transport, usize) {
        match side {
            LegSide::Caller => (self.listener_transport(c.listener), c.listener),
            LegSide::Callee => (
                c.target_transport,
                self.listener_for(c.target_transport, c.listener),
            ),
        }
    }

    /// The listener a request over `want` speaks from: `preferred` if it is of that
    /// transport, else the first listener that is, else `preferred`.
    fn listener_for(&self, want: Transport, preferred: usize) -> usize {
        if self.listener_transport(preferred) == want {
            return preferred;
        }
        (0..self.cfg.advertised.len())
            .find(|i| self.listener_transport(*i) == want)
            .unwrap_or(preferred)
    }

    /// Our Contact URI on `listener` (`<sips:sbc@host:port>`, or `sip:` with its transport).
    fn contact_of(&self, listener: usize) -> String {
        let adv = self.advertised(listener);
        match self.listener_transport(listener) {
            Transport::Tls => format!("<sips:sbc@{adv}>"),
            t => format!("<sip:sbc@{adv};transport={}>", t.as_str()),
        }
    }

    /// The Via transport and sent-by for a request on `side` of a call.
    fn via_of(&self, c: &calls::Call, side: LegSide) -> (Transport, String) {
        let (transport, listener) = self.local_side(c, side);
        (transport, self.advertised(listener).to_string())
    }

    /// Our Contact on `side` of a call: the URI of the listener that leg speaks from.
    fn contact_on(&self, c: &calls::Call, side: LegSide) -> String {
        let (_, listener) = self.local_side(c, side);
        self.contact_of(listener)
    }

    fn dest(&self, call: CallRef, side: LegSide) -> Option<Dest> {
        let c = self.calls.get(call)?;
        Some(match side {
            LegSide::Callee => Dest::Target(c.target),
            LegSide::Caller => Dest::Conn(c.caller.conn),
        })
    }

    /// True if a message from `conn` may come from where `dest` points: the connection
    /// itself, or a pooled connection to the target.
    fn conn_reaches(&self, conn: ConnId, dest: Dest) -> bool {
        match dest {
            Dest::Conn(c) => c == Some(conn),
            Dest::Target(t) => match self.conns.get(&conn).map(|c| &c.kind) {
                Some(ConnKind::Outbound { target }) => *target == t,
                // A trunk's own connection to us answers for its target (§18.2.2).
                Some(ConnKind::Trunk { targets, .. }) => targets.contains(&t),
                _ => false,
            },
        }
    }

    fn send(&mut self, dest: Dest, mut msg: SipMessage) {
        match dest {
            Dest::Target(target) => {
                if msg.is_request() {
                    // RFC 3261 §18.1.1: too large for UDP goes over TCP (the Via says so,
                    // and the driver sends by the Via).
                    crate::transport::apply_size_rule(&mut msg);
                }
                self.outputs.push_back(Output::SendToTarget { target, msg })
            }
            Dest::Conn(Some(conn)) => self.outputs.push_back(Output::Send { conn, msg }),
            Dest::Conn(None) => self.hold_for_caller(msg),
        }
    }

    /// Send `msg` on `side` of `call`.
    fn send_on(&mut self, call: CallRef, side: LegSide, msg: SipMessage) {
        if let Some(dest) = self.dest(call, side) {
            self.send(dest, msg);
        }
    }

    /// An in-dialog request we originate on `side` (BYE, or the ACK for a late 2xx),
    /// with the next CSeq of that leg (or `cseq` when given, for ACK).
    fn own_request(
        &mut self,
        call: CallRef,
        side: LegSide,
        method: Method,
        cseq: Option<u32>,
    ) -> Option<SipMessage> {
        let branch = self.branch();
        let max_forwards = self.cfg.max_forwards;
        let c = self.calls.get(call)?;
        let (transport, advertised) = self.via_of(c, side);
        let c = self.calls.get_mut(call)?;
        let leg = c.leg_mut(side);
        let n = match cseq {
            Some(n) => n,
            None => leg.take_cseq(),
        };
        Some(leg.request(
            method,
            n,
            Hop {
                transport,
                advertised: &advertised,
                branch: &branch,
                max_forwards,
            },
        ))
    }

    /// Per-tenant usage gauges (calls and pending INVITEs against their limits).
    fn report_usage(&self, tenant: &TenantId) {
        if let Some(u) = self.admission.usage(tenant) {
            let t = tenant.to_string();
            metrics::gauge!("sbc_tenant_active_calls", "tenant" => t.clone())
                .set(f64::from(u.active_calls));
            metrics::gauge!("sbc_tenant_pending_invites", "tenant" => t)
                .set(f64::from(u.pending_invites));
        }
    }

    /// Forget a call: media, registry, tags, and (by dropping its `Admitted`) its slot.
    fn end_call(&mut self, call: CallRef, why: &'static str) {
        if self.calls.get(call).is_none() {
            return;
        }
        // The recording's streams go before the call's media.
        self.recording_call_ended(self.clock, call);
        self.restored.forget(call);
        let Some(c) = self.calls.remove(call) else {
            return;
        };
        if let Some(media) = &self.media {
            media.delete(call);
        }
        if let (Some(r), Some(id)) = (&self.registry, &c.registry_id) {
            r.remove(id);
        }
        metrics::gauge!("sbc_sip_active_dialogs").set(self.calls.len() as f64);
        info!(
            call = %call,
            tenant = %c.tenant,
            why,
            sip_call_id_in = %self.cfg.redaction.call_id(&c.caller.call_id),
            sip_call_id_out = %self.cfg.redaction.call_id(&c.callee.call_id),
            target_addr = %c.target_addr,
            "call ended"
        );
        let tenant = c.tenant.clone();
        // Dropping the call releases its admission slot; report usage after that.
        drop(c);
        self.report_usage(&tenant);
    }

    /// End a call from our side: BYE on every leg with a dialog, then forget it.
    fn terminate(&mut self, now: Instant, call: CallRef, why: &'static str) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let tenant = c.tenant.to_string();
        let sides: Vec<LegSide> = [LegSide::Caller, LegSide::Callee]
            .into_iter()
            .filter(|s| c.leg(*s).remote_tag.is_some())
            .collect();
        for side in sides {
            if let Some(mut bye) = self.own_request(call, side, Method::Bye, None) {
                bye.push_header("Reason", format!("SIP;cause=200;text=\"{why}\""));
                self.send_on(call, side, bye);
            }
        }
        let event = if why == NO_ACK {
            CoreLog::NoAckFor2xx
        } else {
            CoreLog::Terminated
        };
        if self.log_now(now, event, &tenant) {
            warn!(
                event = event.as_str(),
                call = %call,
                tenant,
                why,
                "call ended by the gateway: BYE sent on both legs"
            );
        }
        self.end_call(call, why);
    }

    /// A 2xx to an INVITE went to `side`: wait for its ACK (RFC 3261 §13.3.1.4).
    fn await_ack(&mut self, now: Instant, call: CallRef, side: LegSide, resp: &SipMessage) {
        let t1 = self.cfg.timers.t1;
        let give_up = now + self.cfg.timers.t64();
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let cseq = resp.cseq().map(|(n, _)| n).unwrap_or(0);
        c.ack_wait = Some(calls::AckWait {
            side,
            response: resp.clone(),
            cseq,
            next_retransmit: now + t1,
            interval: t1,
            give_up,
        });
        self.timers.push(now + t1, Timer::Ack(call));
    }

    /// The 2xx-without-ACK timer: retransmit the 2xx, or give up and end the call with BYE
    /// on both legs (RFC 3261 §13.3.1.4).
    fn ack_timeout(&mut self, now: Instant, call: CallRef) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let Some(w) = c.ack_wait.as_mut() else {
            return;
        };
        if now >= w.give_up {
            c.ack_wait = None;
            metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => "ack").increment(1);
            self.terminate(now, call, NO_ACK);
            return;
        }
        if now < w.next_retransmit {
            let at = w.next_retransmit.min(w.give_up);
            self.timers.push(at, Timer::Ack(call));
            return;
        }
        w.interval = (w.interval * 2).min(T2);
        w.next_retransmit = now + w.interval;
        let (side, resp, at) = (w.side, w.response.clone(), w.next_retransmit.min(w.give_up));
        self.timers.push(at, Timer::Ack(call));
        self.send_on(call, side, resp);
    }

    /// An ACK arrived from `side` for the INVITE with CSeq `cseq`: stop waiting.
    fn ack_arrived(&mut self, call: CallRef, side: LegSide, cseq: Option<u32>) {
        if let Some(c) = self.calls.get_mut(call) {
            if c.ack_wait
                .as_ref()
                .is_some_and(|w| w.side == side && Some(w.cseq) == cseq)
            {
                c.ack_wait = None;
            }
        }
    }

    /// True if the call is established.
    fn established(&self, call: CallRef) -> bool {
        self.calls
            .get(call)
            .is_some_and(|c| c.state == CallState::Established)
    }

    /// The tenant's header and body policy (the default when it has none).
    fn tenant_policy(&self, tenant: &TenantId) -> Arc<topology::TenantPolicy> {
        self.sip_policies
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.default_policy.clone())
    }
}

/// The current deadline of a timer's owner, `None` if it has gone.
fn deadline_of(pairs: &Pairs, calls: &Calls, timer: Timer) -> Option<Instant> {
    match timer {
        Timer::Pair(id) => pairs.get(id).and_then(pairs::Pair::deadline),
        Timer::Ack(call) => calls
            .get(call)
            .and_then(|c| c.ack_wait.as_ref())
            .map(|w| w.next_retransmit.min(w.give_up)),
        Timer::Reliable(call) => calls.get(call).and_then(|c| c.reliable.poll_timeout()),
        Timer::Recording(_) => None,
    }
}

/// The deadline of a recording's transaction with its SRS, `None` if none is in flight.
fn recording_deadline(recordings: &recording::Recordings, timer: Timer) -> Option<Instant> {
    match timer {
        Timer::Recording(call) => recordings.deadline(call),
        _ => None,
    }
}
