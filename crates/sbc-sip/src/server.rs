//! The SIP-over-TLS server: listeners, connections, the outbound connection pool, and the
//! task that drives the sans-IO [`B2bua`].
//!
//! Owns: sockets, TLS handshakes, stream framing per connection, timers (tokio clock).
//! Must not: make protocol decisions (those are in [`crate::b2bua`]).
//!
//! Shape: one reader and one writer task per connection; readers frame and parse in
//! parallel and hand parsed messages to one core task that owns the B2BUA state. Writers
//! have bounded queues; the core never waits on a slow peer (a full queue drops the
//! message, counted). Garbage is answered (400) or dropped by the reader itself, so a flood
//! of it on one connection never reaches the core that serves every other call.
//!
//! Every state a peer can hold open is bounded in time or count: a TLS handshake by
//! [`HANDSHAKE_TIMEOUT`], a silent connection by `sip.idle_timeout_secs`, a message being
//! received by `sip.message_timeout_ms` (from its first byte to its last, so dribbling
//! bytes does not keep it alive), and the connections of one source holding an incomplete
//! message by `sip.max_partial_connections_per_source`. Each close is counted by reason
//! (`sbc_sip_connections_closed_total`). Log lines a peer can trigger at will go through a
//! [`LogAggregator`]: the first per (event, source) and interval is logged with its
//! details, the rest are summed into one line at the end of the interval.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sbc_core::admission::{Admission, RefusalCause, TokenBucket};
use sbc_core::config::{Config, Limits as TenantLimits, CORE_QUEUE_CAPACITY};
use sbc_core::flood::{FloodAction, FloodGuard, Verdict};
use sbc_core::log_agg::{LogAggregator, Summary, DEFAULT_INTERVAL, DEFAULT_MAX_KEYS};
use sbc_core::media::MediaControl;
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_core::tenant::{PeerIdentity, Recognizer, TenantId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Level};

use crate::b2bua::{
    malformed_response, service_unavailable, B2bua, B2buaConfig, B2buaStats, ConnId, ConnKind,
    Input, Output,
};
use crate::error::SipError;
use crate::framing::{Frame, FrameError, Framer};
use crate::message::{salvage_request, tag, Limits, Method, SipMessage};
use crate::routing::TargetId;
use crate::targets::{PreparedRoute, Target, TargetTable};
use crate::tls;
use crate::transaction::TimerConfig;

/// Time allowed for a TLS handshake before the connection is dropped: generous for a
/// trunk across an ocean, short enough that half-open handshakes cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages queued for one connection's writer. At ~1 KB a message this is 1 MB; a peer
/// that lets its queue fill is not reading and loses messages (counted) rather than
/// stalling the core.
const WRITE_QUEUE: usize = 1024;

/// Inputs queued for the core task. Readers wait when it is full, which slows their TCP
/// peers (backpressure) instead of growing memory; past `overload.max_core_queue` new
/// INVITEs are refused 503 by the readers themselves.
const CORE_QUEUE: usize = CORE_QUEUE_CAPACITY;

/// Retry-After for refusals because the core's queue is deep: it drains in well under a
/// second, so the shortest honest value.
const QUEUE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Consecutive malformed messages after which a connection is closed: a peer with a bug
/// gets its 400s, a garbage flood is cut off.
pub const MAX_MALFORMED_PER_CONNECTION: u32 = 32;

/// Read buffer per connection.
const READ_CHUNK: usize = 16 * 1024;

/// How often summaries of aggregated log lines are checked for: an interval's summary is
/// written at most this late.
const LOG_FLUSH_TICK: Duration = Duration::from_secs(1);

/// Why a connection ended: the `reason` label of `sbc_sip_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
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
    fn as_str(self) -> &'static str {
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
enum LogEvent {
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
    fn as_str(self) -> &'static str {
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
    fn level(self) -> Level {
        match self {
            LogEvent::PeerRecognised => Level::INFO,
            _ => Level::WARN,
        }
    }
}

/// The server's log aggregator, shared by every reader.
#[derive(Debug, Clone)]
struct Logs(Arc<Mutex<LogAggregator<LogEvent>>>);

impl Logs {
    fn new() -> Logs {
        Logs(Arc::new(Mutex::new(LogAggregator::new(
            DEFAULT_INTERVAL,
            DEFAULT_MAX_KEYS,
        ))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogAggregator<LogEvent>> {
        // Plain counters, consistent at every step: a poisoned lock is safe to keep using.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count `event` from `source`; true: log this one now at the event's level.
    fn first(&self, event: LogEvent, source: IpAddr) -> bool {
        self.lock().record(Instant::now(), event, source)
    }

    /// Write the summaries of an ended interval (all of them when `all`, at shutdown).
    fn flush(&self, all: bool) {
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
fn emit_summary(s: &Summary<LogEvent>) {
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

/// Connections holding an incomplete message, per source IP. An entry exists only while
/// one of its source's connections holds a [`PartialSlot`], so the table is bounded by the
/// open connections (themselves bounded per source by the flood guard).
#[derive(Debug, Clone)]
struct SlowSources {
    held: Arc<Mutex<HashMap<IpAddr, u32>>>,
    max: u32,
}

/// One connection's place in [`SlowSources`]; released on drop.
#[derive(Debug)]
struct PartialSlot {
    owner: SlowSources,
    source: IpAddr,
}

impl Drop for PartialSlot {
    fn drop(&mut self) {
        let mut held = self.owner.lock();
        if let Some(n) = held.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

impl SlowSources {
    fn new(max: u32) -> SlowSources {
        SlowSources {
            held: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // Plain counters, consistent at every step: a poisoned lock is safe to keep using.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more connection of `source` holding an incomplete message, or
    /// `None` if the source holds its maximum already.
    fn hold(&self, source: IpAddr) -> Option<PartialSlot> {
        let mut held = self.lock();
        let n = held.entry(source).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(held);
        Some(PartialSlot {
            owner: self.clone(),
            source,
        })
    }

    /// Connections holding an incomplete message now, all sources.
    fn total(&self) -> usize {
        self.lock().values().map(|n| *n as usize).sum()
    }
}

enum Event {
    Core(Input),
    Registered {
        conn: ConnId,
        kind: ConnKind,
        handle: ConnHandle,
    },
    ConnectFailed {
        target: TargetId,
        error: String,
    },
    Reload {
        config: Arc<Config>,
        routes: Vec<PreparedRoute>,
    },
}

/// The core's handle on a connection: its write queue and a way to close it.
struct ConnHandle {
    writer: mpsc::Sender<Bytes>,
    close: Arc<Notify>,
    /// The peer's address: the source of this connection's aggregated log lines.
    peer: IpAddr,
}

enum PoolEntry {
    Connecting(Vec<SipMessage>),
    Up(ConnId),
}

/// A running SIP server.
#[derive(Debug)]
pub struct ServerHandle {
    /// Bound SIP-over-TLS listener addresses, in config order.
    pub sip_addrs: Vec<SocketAddr>,
    stats: Arc<Mutex<B2buaStats>>,
    slow: SlowSources,
    /// The admission control in use (swapped on reload), for usage reports.
    admission: Arc<RwLock<Arc<Admission>>>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Tenant recognition in use (swapped on reload); read when a connection is accepted.
    recognizer: Arc<RwLock<Arc<Recognizer>>>,
    /// Each listener's name and TLS acceptor (swapped on reload), in config order.
    acceptors: ListenerTls,
}

/// Each listener's name and TLS acceptor, in config order.
struct ListenerTls(Vec<(String, SharedAcceptor)>);

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

/// A listener's TLS settings, replaced whole on reload; read when a connection is
/// accepted, so handshakes under way finish with the settings they started with.
type SharedAcceptor = Arc<RwLock<TlsAcceptor>>;

impl ServerHandle {
    /// Sizes of the B2BUA's tables as of its last step.
    pub fn stats(&self) -> B2buaStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Inbound connections holding an incomplete message now (all sources): what
    /// `sip.max_partial_connections_per_source` bounds per source.
    pub fn partial_connections(&self) -> usize {
        self.slow.total()
    }

    /// Apply a reloaded config: tenant limits (running calls keep their slots; a quota
    /// lowered below current usage refuses new calls only), the flood guard and overload
    /// settings, header, body and media policies, routes and their targets (new calls take
    /// the new routes; running calls keep their target and its connection; a target whose
    /// address, TLS name or CA changed gets a fresh connection), tenant recognition and each
    /// listener's certificate, key and client CA (both for connections accepted from now
    /// on). Everything is prepared first: if a route or listener certificate cannot be
    /// used, nothing is applied and the error says which. Listener addresses and the set
    /// of listeners need a restart (see `sbc_core::reload::diff`): when the listener names
    /// differ from the running ones, their TLS settings are left as they are.
    pub async fn reload(&self, config: Arc<Config>) -> Result<(), SipError> {
        let routes = crate::targets::prepare(&config)?;
        let same_listeners = config.listeners.len() == self.acceptors.0.len()
            && config
                .listeners
                .iter()
                .zip(&self.acceptors.0)
                .all(|(l, (name, _))| *name == l.name);
        let acceptors = if same_listeners {
            Some(listener_acceptors(&config)?)
        } else {
            None
        };
        let recognizer = Arc::new(Recognizer::new(&config));
        self.events
            .send(Event::Reload {
                config: config.clone(),
                routes,
            })
            .await
            .map_err(|_| SipError::Config("the SIP core has stopped".to_string()))?;
        *self.recognizer.write().unwrap_or_else(|p| p.into_inner()) = recognizer;
        for (new, (_, shared)) in acceptors.into_iter().flatten().zip(&self.acceptors.0) {
            *shared.write().unwrap_or_else(|p| p.into_inner()) = new;
        }
        Ok(())
    }

    /// A tenant's usage against its limits, as admission sees it now.
    pub fn usage(&self, tenant: &TenantId) -> Option<sbc_core::admission::Usage> {
        self.admission
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .usage(tenant)
    }

    /// A shareable function giving [`ServerHandle::usage`].
    pub fn usage_source(&self) -> sbc_core::admission::UsageSource {
        let admission = self.admission.clone();
        Arc::new(move |t: &TenantId| admission.read().unwrap_or_else(|p| p.into_inner()).usage(t))
    }

    /// Stop accepting and stop the core.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Shared per-connection settings.
#[derive(Clone)]
struct ConnSettings {
    max_message_bytes: usize,
    limits: Limits,
    idle: Duration,
    /// `sip.message_timeout_ms`: first byte to last byte of one message.
    message_timeout: Duration,
    guards: Guards,
}

/// Load and abuse protection that readers apply before a message reaches the core.
#[derive(Clone)]
struct Guards {
    flood: FloodGuard,
    /// `overload.max_core_queue` (reloadable).
    max_core_queue: Arc<AtomicUsize>,
    /// The admission control in use (swapped on reload): each tenant's limits are read
    /// from it when a connection starts.
    admission: Arc<RwLock<Arc<Admission>>>,
    /// Inbound connections holding an incomplete message, per source.
    slow: SlowSources,
    /// Aggregation of the log lines a peer can trigger.
    logs: Logs,
}

impl Guards {
    fn new(config: &Config, admission: Arc<RwLock<Arc<Admission>>>) -> Guards {
        report_limits(config);
        Guards {
            flood: FloodGuard::new(config.flood_guard.clone()),
            max_core_queue: Arc::new(AtomicUsize::new(config.overload.max_core_queue)),
            admission,
            slow: SlowSources::new(config.sip.max_partial_connections_per_source),
            logs: Logs::new(),
        }
    }

    fn reload(&self, config: &Config) {
        report_limits(config);
        self.flood.reconfigure(config.flood_guard.clone());
        self.max_core_queue
            .store(config.overload.max_core_queue, Ordering::Relaxed);
    }

    fn limits_of(&self, tenant: &TenantId) -> Option<TenantLimits> {
        self.admission
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .usage(tenant)
            .map(|u| u.limits)
    }
}

/// Each tenant's media policy (with its media limits).
fn media_policies(config: &Config) -> HashMap<TenantId, sbc_core::media::MediaPolicy> {
    config
        .tenants
        .iter()
        .map(|t| (t.id.clone(), t.media.clone()))
        .collect()
}

/// Each tenant's header and body policy.
fn sip_policies(config: &Config) -> HashMap<TenantId, crate::b2bua::topology::TenantPolicy> {
    config
        .tenants
        .iter()
        .map(|t| (t.id.clone(), crate::b2bua::topology::TenantPolicy::new(t)))
        .collect()
}

/// Each tenant's limits as gauges, so dashboards show usage against them.
fn report_limits(config: &Config) {
    for t in &config.tenants {
        let id = t.id.to_string();
        let l = &t.limits;
        for (name, value) in [
            ("calls_per_second", l.calls_per_second),
            ("call_burst", f64::from(l.call_burst)),
            ("max_concurrent_calls", f64::from(l.max_concurrent_calls)),
            ("max_pending_invites", f64::from(l.max_pending_invites)),
            (
                "requests_per_second_per_connection",
                l.requests_per_second_per_connection,
            ),
        ] {
            metrics::gauge!("sbc_tenant_limit", "tenant" => id.clone(), "limit" => name).set(value);
        }
    }
}

/// What an inbound connection's reader checks per request.
struct InboundCheck {
    source: IpAddr,
    /// The tenant as a metric label and log field (made once per connection).
    tenant: String,
    /// Requests per second on this connection (`requests_per_second_per_connection`).
    rate: Option<TokenBucket>,
}

/// A request that starts something new (not part of an existing dialog or transaction):
/// the only kind refused for load. ACK, BYE, CANCEL and in-dialog requests always pass.
fn starts_something(msg: &SipMessage) -> bool {
    match msg.method() {
        Some(Method::Ack | Method::Bye | Method::Cancel | Method::Prack) | None => false,
        Some(_) => msg.header("to").and_then(tag).is_none(),
    }
}

/// What the SIP server is wired to besides its config.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Calls are recorded here for the admin plane.
    pub registry: Option<Arc<CallRegistry>>,
    /// Readiness and drain (new calls refused 503 while draining).
    pub drain: Option<Arc<DrainState>>,
    /// Media anchoring; `None`: SDP passes untouched.
    pub media: Option<Arc<dyn MediaControl>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("registry", &self.registry.is_some())
            .field("drain", &self.drain.is_some())
            .field("media", &self.media.is_some())
            .finish()
    }
}

/// Bind the listeners in `config` and start serving, with no admin plane or media.
pub async fn start(config: Arc<Config>) -> Result<ServerHandle, SipError> {
    start_with(config, Hooks::default()).await
}

/// Bind the listeners in `config` and start serving, wired to `hooks`.
pub async fn start_with(config: Arc<Config>, hooks: Hooks) -> Result<ServerHandle, SipError> {
    let conn_ids = Arc::new(AtomicU64::new(1));
    let (events_tx, events_rx) = mpsc::channel::<Event>(CORE_QUEUE);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let admission = Arc::new(Admission::new(&config));
    let shared_admission = Arc::new(RwLock::new(admission.clone()));
    let settings = ConnSettings {
        max_message_bytes: config.sip.max_message_bytes,
        limits: Limits {
            max_headers: config.sip.max_headers,
        },
        idle: config.sip.idle_timeout,
        message_timeout: config.sip.message_timeout,
        guards: Guards::new(&config, shared_admission.clone()),
    };

    // Routes and their connectors.
    let mut targets = TargetTable::default();
    let (routes, _) = targets.install(
        crate::targets::prepare(&config)?,
        &std::collections::HashSet::new(),
    );
    let recognizer = Arc::new(RwLock::new(Arc::new(Recognizer::new(&config))));
    let tls_configs = listener_acceptors(&config)?;
    let mut acceptors = Vec::new();

    let mut tasks = Vec::new();
    let mut sip_addrs = Vec::new();
    let mut advertised = Vec::new();
    for ((index, listener), tls) in config.listeners.iter().enumerate().zip(tls_configs) {
        let acceptor = Arc::new(RwLock::new(tls));
        acceptors.push((listener.name.clone(), acceptor.clone()));
        let socket = TcpListener::bind(listener.address)
            .await
            .map_err(|source| SipError::Bind {
                addr: listener.address,
                source,
            })?;
        let local = socket.local_addr().map_err(|source| SipError::Bind {
            addr: listener.address,
            source,
        })?;
        let host = match &listener.advertised_host {
            Some(h) => h.clone(),
            None => match local.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            },
        };
        advertised.push(format!("{host}:{}", local.port()));
        sip_addrs.push(local);
        info!(listener = %listener.name, address = %local, "SIP over TLS listening");
        tasks.push(tokio::spawn(accept_loop(
            index,
            socket,
            acceptor,
            recognizer.clone(),
            events_tx.clone(),
            conn_ids.clone(),
            settings.clone(),
            shutdown_rx.clone(),
        )));
    }

    tasks.push(tokio::spawn(watch_certificates(
        config.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(flush_logs(
        settings.guards.logs.clone(),
        shutdown_rx.clone(),
    )));
    let slow = settings.guards.slow.clone();
    let events_tx_handle = events_tx.clone();
    let core = B2bua::new(
        B2buaConfig {
            timers: TimerConfig {
                t1: config.sip.t1,
                max_ringing: config.sip.max_ringing,
            },
            max_forwards: config.sip.max_forwards,
            advertised,
            redaction: config.logging.redact_numbers,
            seed: rand::random(),
            wall_clock: crate::b2bua::WallClock::system(),
        },
        Arc::new(routes),
        admission,
    );
    let mut core = core;
    core.set_sip_policies(sip_policies(&config));
    if let (Some(registry), Some(drain)) = (hooks.registry, hooks.drain) {
        core.set_admin(registry, drain);
    }
    if let Some(media) = hooks.media {
        // Media events (timeouts) come in as core inputs the moment they happen.
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        media.set_event_sink(Arc::new(move |e| {
            let _ = media_tx.send(e);
        }));
        tasks.push(tokio::spawn(forward_media_events(
            media_rx,
            events_tx.clone(),
            shutdown_rx.clone(),
        )));
        core.set_media(media, media_policies(&config));
    }
    let stats = Arc::new(Mutex::new(B2buaStats::default()));
    let core_admission = shared_admission.clone();
    tasks.push(tokio::spawn(core_loop(
        core,
        core_admission,
        targets,
        events_rx,
        events_tx,
        conn_ids,
        settings,
        stats.clone(),
        shutdown_rx,
    )));
    Ok(ServerHandle {
        sip_addrs,
        stats,
        slow,
        admission: shared_admission,
        events: events_tx_handle,
        shutdown: shutdown_tx,
        tasks,
        recognizer,
        acceptors: ListenerTls(acceptors),
    })
}

/// Each listener's TLS acceptor, in config order; fails naming the listener whose
/// certificate, key or client CA is unusable (a certificate that does not match its key
/// included).
fn listener_acceptors(config: &Config) -> Result<Vec<TlsAcceptor>, SipError> {
    config
        .listeners
        .iter()
        .map(|l| {
            tls::server_config(
                &l.certificate_pem,
                l.private_key.pem(),
                l.client_ca_pem.as_deref(),
                l.require_client_cert,
            )
            .map(TlsAcceptor::from)
            .map_err(|e| SipError::Tls(format!("listener {:?}: {e}", l.name)))
        })
        .collect()
}

/// Check that `config` can be served, without binding anything: every listener's
/// certificate, key (and that they match) and client CA, and every route's TLS name and
/// CA. What `sbc-edge check-config` runs after the config's own validation.
pub fn check_config(config: &Config) -> Result<(), SipError> {
    listener_acceptors(config)?;
    crate::targets::prepare(config)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener_index: usize,
    socket: TcpListener,
    acceptor: SharedAcceptor,
    recognizer: Arc<RwLock<Arc<Recognizer>>>,
    events: mpsc::Sender<Event>,
    conn_ids: Arc<AtomicU64>,
    settings: ConnSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                // Out of file descriptors and similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match settings.guards.flood.connection(peer.ip(), Instant::now()) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics::counter!("sbc_flood_refused_total", "reason" => refusal.as_str())
                    .increment(1);
                debug!(event = "flood_connection_refused", peer = %peer, reason = refusal.as_str(), "connection refused");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // The settings in force when the connection came: a reload during its handshake
        // does not change them.
        let acceptor = acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
        let recognizer = recognizer.read().unwrap_or_else(|p| p.into_inner()).clone();
        let events = events.clone();
        let settings = settings.clone();
        let conn = ConnId(conn_ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("sbc_tls_handshakes_failed_total", "side" => "inbound")
                        .increment(1);
                    log_first!(settings.guards.logs, warn, LogEvent::HandshakeFailed, peer.ip(), peer = %peer, error = %e, "inbound TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("sbc_tls_handshakes_failed_total", "side" => "inbound")
                        .increment(1);
                    log_first!(settings.guards.logs, warn, LogEvent::HandshakeTimeout, peer.ip(), peer = %peer, "inbound TLS handshake timed out");
                    return;
                }
            };
            metrics::counter!("sbc_tls_handshakes_total", "side" => "inbound").increment(1);
            let (_, session) = tls.get_ref();
            let client_cert = session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let sni = session.server_name().map(str::to_string);
            let identity = PeerIdentity {
                client_cert_der: client_cert.as_deref(),
                sni: sni.as_deref(),
                source: peer.ip(),
            };
            let tenant = match recognizer.recognize(&identity) {
                Ok(t) => {
                    log_first!(settings.guards.logs, info, LogEvent::PeerRecognised, peer.ip(), peer = %peer, tenant = %t, "connection recognised");
                    Some(t)
                }
                Err(e) => {
                    metrics::counter!("sbc_tenant_recognition_failed_total").increment(1);
                    log_first!(settings.guards.logs, warn, LogEvent::RecognitionFailed, peer.ip(), peer = %peer, reason = %e, "connection from unrecognised peer");
                    None
                }
            };
            let rate = tenant
                .as_ref()
                .and_then(|t| settings.guards.limits_of(t))
                .map(|l| {
                    let rps = l.requests_per_second_per_connection;
                    TokenBucket::new(rps, rps.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
                });
            let check = InboundCheck {
                source: peer.ip(),
                tenant: tenant.as_ref().map(TenantId::to_string).unwrap_or_default(),
                rate,
            };
            let kind = ConnKind::Inbound {
                tenant,
                listener: listener_index,
            };
            run_connection(conn, kind, peer.ip(), tls, events, settings, Some(check)).await;
            // The source's connection slot is held until here.
            drop(slot);
        });
    }
}

/// Register a connection with the core, then pump it until it closes. Everything the
/// connection holds (read buffer, framer, partial-message slot) is local here and freed
/// when it returns.
async fn run_connection<S>(
    conn: ConnId,
    kind: ConnKind,
    source: IpAddr,
    stream: S,
    events: mpsc::Sender<Event>,
    settings: ConnSettings,
    mut check: Option<InboundCheck>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (wtx, mut wrx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let close = Arc::new(Notify::new());
    if events
        .send(Event::Registered {
            conn,
            kind,
            handle: ConnHandle {
                writer: wtx.clone(),
                close: close.clone(),
                peer: source,
            },
        })
        .await
        .is_err()
    {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(bytes) = wrx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let logs = settings.guards.logs.clone();
    let mut framer = Framer::new(settings.max_message_bytes);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut malformed_run = 0u32;
    // When the message being received began (its first byte), while one is incomplete.
    let mut message_started: Option<tokio::time::Instant> = None;
    // Held while an inbound connection holds an incomplete message.
    let mut partial: Option<PartialSlot> = None;
    let reason = 'read: loop {
        let idle_deadline = tokio::time::Instant::now() + settings.idle;
        let (deadline, on_timeout) = match message_started {
            Some(t) if t + settings.message_timeout < idle_deadline => {
                (t + settings.message_timeout, CloseReason::MessageTimeout)
            }
            _ => (idle_deadline, CloseReason::Idle),
        };
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, rd.read(&mut buf)) => r,
            _ = close.notified() => break 'read CloseReason::Core,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) => break CloseReason::Peer,
            Ok(Ok(n)) => n,
            Err(_) => break on_timeout,
        };
        let read_at = tokio::time::Instant::now();
        framer.push(&buf[..n]);
        let mut completed = false;
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::KeepAlivePing)) => {
                    // RFC 5626 §3.5.1: a double-CRLF ping is answered with one CRLF pong.
                    let _ = wtx.try_send(Bytes::from_static(b"\r\n"));
                }
                Ok(Some(Frame::Message(bytes))) => {
                    completed = true;
                    metrics::counter!("sbc_sip_messages_received_total").increment(1);
                    match SipMessage::parse_with_limits(&bytes, &settings.limits) {
                        Ok(msg) => {
                            malformed_run = 0;
                            if let Some(check) = check.as_mut() {
                                if let Some(refusal) =
                                    screen(check, &msg, &events, &settings.guards)
                                {
                                    if let Some(resp) = refusal {
                                        let _ = wtx.try_send(Bytes::from(resp.to_bytes()));
                                    }
                                    continue;
                                }
                            }
                            if events
                                .send(Event::Core(Input::Message { conn, msg }))
                                .await
                                .is_err()
                            {
                                break 'read CloseReason::Shutdown;
                            }
                        }
                        Err(error) => {
                            malformed_run += 1;
                            metrics::counter!("sbc_sip_messages_rejected_total", "reason" => "malformed").increment(1);
                            let salvaged = salvage_request(&bytes);
                            match malformed_response(&error, salvaged.as_ref()) {
                                Some(resp) => {
                                    log_first!(logs, warn, LogEvent::MalformedRequest, source, peer = %source, conn = %conn, reason = %error.reason_phrase(), "answered");
                                    let _ = wtx.try_send(Bytes::from(resp.to_bytes()));
                                }
                                None => {
                                    log_first!(logs, warn, LogEvent::MalformedMessage, source, peer = %source, conn = %conn, reason = %error.reason_phrase(), "dropped: cannot be answered");
                                }
                            }
                            if malformed_run >= MAX_MALFORMED_PER_CONNECTION {
                                log_first!(
                                    logs,
                                    warn,
                                    LogEvent::MalformedFlood,
                                    source,
                                    peer = %source,
                                    conn = %conn,
                                    "too many malformed messages: closing"
                                );
                                break 'read CloseReason::MalformedFlood;
                            }
                        }
                    }
                }
                Err(FrameError::TooLarge { limit }) => {
                    metrics::counter!("sbc_sip_messages_rejected_total", "reason" => "too_large")
                        .increment(1);
                    log_first!(
                        logs,
                        warn,
                        LogEvent::MessageTooLarge,
                        source,
                        peer = %source,
                        conn = %conn,
                        limit,
                        "message exceeds the size bound: closing connection"
                    );
                    break 'read CloseReason::TooLarge;
                }
                Err(e) => {
                    metrics::counter!("sbc_sip_messages_rejected_total", "reason" => "framing")
                        .increment(1);
                    log_first!(logs, warn, LogEvent::FramingError, source, peer = %source, conn = %conn, error = ?e, "cannot frame the stream: closing connection");
                    break 'read CloseReason::Framing;
                }
            }
        }
        if !framer.in_message() {
            message_started = None;
            partial = None;
            continue;
        }
        // A message is incomplete: its deadline runs from its first byte, which came in
        // this read if the previous message completed here (CRLF keep-alives start none).
        if completed || message_started.is_none() {
            message_started = Some(read_at);
        }
        if check.is_some() && partial.is_none() {
            match settings.guards.slow.hold(source) {
                Some(slot) => partial = Some(slot),
                None => break CloseReason::SlowSource,
            }
        }
    };
    drop(partial);
    metrics::counter!("sbc_sip_connections_closed_total", "reason" => reason.as_str()).increment(1);
    match reason {
        CloseReason::MessageTimeout => log_first!(
            logs,
            warn,
            LogEvent::MessageTimeout,
            source,
            peer = %source,
            conn = %conn,
            held = framer.buffered(),
            "message not complete in time: closing connection"
        ),
        CloseReason::SlowSource => log_first!(
            logs,
            warn,
            LogEvent::SlowSource,
            source,
            peer = %source,
            conn = %conn,
            "too many connections of this source hold an incomplete message: closing"
        ),
        CloseReason::Idle => debug!(conn = %conn, "idle timeout: closing"),
        CloseReason::Core => debug!(conn = %conn, "closed by the core"),
        _ => {}
    }
    drop(framer);
    drop(buf);
    drop(wtx);
    let _ = events.send(Event::Core(Input::Closed { conn })).await;
    // The core drops its writer handle on Closed; the writer then flushes and ends.
    let _ = writer.await;
}

/// Write the aggregated log lines' summaries as their intervals end, and what is left at
/// shutdown.
async fn flush_logs(logs: Logs, mut shutdown: watch::Receiver<bool>) {
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

/// A certificate closer to expiry than this is warned about at every check.
pub const CERTIFICATE_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// How often listener certificates are checked for expiry.
const CERTIFICATE_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Publish each listener certificate's time to expiry as a gauge, and warn from 30 days
/// before it (at start, then hourly).
async fn watch_certificates(config: Arc<Config>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = std::time::SystemTime::now();
        for l in &config.listeners {
            let Some(not_after) = l.certificate_not_after() else {
                continue;
            };
            let left = match not_after.duration_since(now) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            metrics::gauge!("sbc_tls_certificate_expiry_seconds", "listener" => l.name.clone())
                .set(left);
            if left < CERTIFICATE_WARNING.as_secs_f64() {
                warn!(
                    event = "certificate_expiring",
                    listener = %l.name,
                    days_left = (left / 86_400.0).floor(),
                    "listener certificate expires soon (or has expired): renew it"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CERTIFICATE_CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Screen a request from an inbound connection before it reaches the core: the per-source
/// flood guard, then (for requests that start something new) the core's queue depth and
/// the connection's request rate. `None`: pass it on. `Some(answer)`: it stops here, with
/// the 503 to send back if there is one.
fn screen(
    check: &mut InboundCheck,
    msg: &SipMessage,
    events: &mpsc::Sender<Event>,
    guards: &Guards,
) -> Option<Option<SipMessage>> {
    if !msg.is_request() {
        return None;
    }
    let now = Instant::now();
    match guards.flood.request(check.source, now) {
        Verdict::Allow => {}
        Verdict::Blocked {
            action,
            retry_after,
            newly,
        } => {
            metrics::counter!("sbc_flood_blocked_requests_total", "tenant" => check.tenant.clone())
                .increment(1);
            if newly {
                metrics::counter!("sbc_flood_sources_blocked_total").increment(1);
                log_first!(guards.logs, warn, LogEvent::FloodSourceBlocked, check.source, source = %check.source, tenant = %check.tenant, block_secs = retry_after.as_secs(), "source over its request rate: blocked");
            }
            let answer = (action == FloodAction::Reply503 && msg.method() != Some(&Method::Ack))
                .then(|| service_unavailable(msg, retry_after, "source request rate exceeded"));
            return Some(answer);
        }
    }
    if !starts_something(msg) {
        return None;
    }
    let queued = CORE_QUEUE.saturating_sub(events.capacity());
    if queued >= guards.max_core_queue.load(Ordering::Relaxed) {
        metrics::counter!("sbc_admission_refused_total", "tenant" => check.tenant.clone(), "cause" => RefusalCause::Overload.as_str()).increment(1);
        log_first!(
            guards.logs,
            warn,
            LogEvent::Overload,
            check.source,
            queued,
            "core queue deep: new request refused 503"
        );
        return Some(Some(service_unavailable(
            msg,
            QUEUE_RETRY_AFTER,
            RefusalCause::Overload.text(),
        )));
    }
    if let Some(bucket) = check.rate.as_mut() {
        if let Err(wait) = bucket.try_take(now) {
            metrics::counter!("sbc_sip_requests_refused_total", "reason" => "connection_rate", "tenant" => check.tenant.clone()).increment(1);
            debug!(tenant = %check.tenant, "connection request rate exceeded: 503");
            return Some(Some(service_unavailable(
                msg,
                wait,
                "connection request rate limit",
            )));
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn core_loop(
    mut core: B2bua,
    shared_admission: Arc<RwLock<Arc<Admission>>>,
    mut targets: TargetTable,
    mut events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    conn_ids: Arc<AtomicU64>,
    settings: ConnSettings,
    stats: Arc<Mutex<B2buaStats>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut writers: HashMap<ConnId, ConnHandle> = HashMap::new();
    let mut pool: HashMap<TargetId, PoolEntry> = HashMap::new();
    let mut pooled_conn: HashMap<ConnId, TargetId> = HashMap::new();
    let tokio_start = tokio::time::Instant::now();
    let std_start = Instant::now();
    loop {
        let deadline = core.poll_timeout();
        let sleep_until = deadline.map(|d| tokio_start + d.saturating_duration_since(std_start));
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => Some(e), None => return },
            _ = async {
                match sleep_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => None,
            _ = shutdown.changed() => return,
        };
        let now = Instant::now();
        match event {
            None => core.handle_timeout(now),
            Some(Event::Registered { conn, kind, handle }) => {
                writers.insert(conn, handle);
                if let ConnKind::Outbound { target } = &kind {
                    pooled_conn.insert(conn, *target);
                    if let Some(PoolEntry::Connecting(queued)) =
                        pool.insert(*target, PoolEntry::Up(conn))
                    {
                        for msg in queued {
                            write_to(&writers, &settings.guards.logs, conn, &msg);
                        }
                    }
                }
                core.handle_input(now, Input::Connected { conn, kind });
            }
            Some(Event::ConnectFailed { target, error }) => {
                metrics::counter!("sbc_tls_handshakes_failed_total", "side" => "outbound")
                    .increment(1);
                let addr = targets.get(target).map_or("", |t| t.addr.as_str());
                warn!(event = "target_connect_failed", target_addr = %addr, error = %error, "cannot reach route target");
                if let Some(PoolEntry::Connecting(queued)) = pool.remove(&target) {
                    for msg in queued {
                        core.handle_input(now, Input::SendFailed { target, msg });
                    }
                }
            }
            Some(Event::Reload { config, routes }) => {
                let admission = Arc::new(core.admission().reloaded(&config));
                *shared_admission.write().unwrap_or_else(|p| p.into_inner()) = admission.clone();
                let (table, done) = targets.install(routes, &core.targets_in_use());
                for id in &done.retired {
                    // No route names it and no call uses it: its connection can go.
                    if let Some(PoolEntry::Up(conn)) = pool.remove(id) {
                        if let Some(h) = writers.remove(&conn) {
                            h.close.notify_one();
                        }
                    }
                }
                info!(
                    event = "routes_reloaded",
                    targets_kept = done.kept,
                    targets_new = done.added,
                    targets_retired = done.retired.len(),
                    "routes replaced: new calls take them, running calls keep their target"
                );
                core.reconfigure(Arc::new(table), admission);
                core.set_media_policies(media_policies(&config));
                core.set_sip_policies(sip_policies(&config));
                settings.guards.reload(&config);
                info!(
                    event = "config_reloaded",
                    tenants = config.tenants.len(),
                    "limits, flood guard, overload settings, media and header/body policies reloaded"
                );
            }
            Some(Event::Core(input)) => {
                if let Input::Closed { conn } = &input {
                    writers.remove(conn);
                    if let Some(target) = pooled_conn.remove(conn) {
                        if matches!(pool.get(&target), Some(PoolEntry::Up(c)) if c == conn) {
                            pool.remove(&target);
                        }
                    }
                }
                core.handle_input(now, input);
                core.handle_timeout(now);
            }
        }
        while let Some(out) = core.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    write_to(&writers, &settings.guards.logs, conn, &msg);
                }
                Output::Close { conn } => {
                    if let Some(h) = writers.remove(&conn) {
                        h.close.notify_one();
                    }
                }
                Output::SendToTarget { target, msg } => match pool.get_mut(&target) {
                    Some(PoolEntry::Up(conn)) => {
                        let conn = *conn;
                        if !write_to(&writers, &settings.guards.logs, conn, &msg) {
                            core.handle_input(now, Input::SendFailed { target, msg });
                        }
                    }
                    Some(PoolEntry::Connecting(queue)) => queue.push(msg),
                    None => match targets.get(target) {
                        Some(t) => {
                            pool.insert(target, PoolEntry::Connecting(vec![msg]));
                            tokio::spawn(connect(
                                target,
                                t.clone(),
                                events_tx.clone(),
                                ConnId(conn_ids.fetch_add(1, Ordering::Relaxed)),
                                settings.clone(),
                            ));
                        }
                        None => core.handle_input(now, Input::SendFailed { target, msg }),
                    },
                },
            }
        }
        if let Ok(mut s) = stats.lock() {
            *s = core.stats();
        }
    }
}

/// Hand media events to the core. The channel from media is unbounded (one event per
/// call at most) and the core's is bounded: this waits for room rather than lose an
/// event, so a call whose media timed out is always torn down.
async fn forward_media_events(
    mut media: mpsc::UnboundedReceiver<sbc_core::media::MediaEvent>,
    events: mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = media.recv() => match e { Some(e) => e, None => return },
            _ = shutdown.changed() => return,
        };
        if events.send(Event::Core(Input::Media(event))).await.is_err() {
            return;
        }
    }
}

/// Queue a message for a connection's writer; false if the connection is gone or its
/// queue is full.
/// Queue `msg` on `conn`'s writer; false if it was dropped. A full queue is counted per
/// message and logged through the aggregator: one line per peer and interval, then a
/// summary, however many messages a stalled peer makes us drop.
fn write_to(
    writers: &HashMap<ConnId, ConnHandle>,
    logs: &Logs,
    conn: ConnId,
    msg: &SipMessage,
) -> bool {
    let Some(h) = writers.get(&conn) else {
        debug!(conn = %conn, "message for a closed connection dropped");
        return false;
    };
    match h.writer.try_send(Bytes::from(msg.to_bytes())) {
        Ok(()) => true,
        Err(_) => {
            metrics::counter!("sbc_sip_messages_dropped_total", "reason" => "write_queue_full")
                .increment(1);
            log_first!(logs, warn, LogEvent::WriteQueueFull, h.peer, peer = %h.peer, conn = %conn, "write queue full or closed: message dropped");
            false
        }
    }
}

async fn connect(
    target: TargetId,
    t: Target,
    events: mpsc::Sender<Event>,
    conn: ConnId,
    settings: ConnSettings,
) {
    let attempt = async {
        let tcp = TcpStream::connect(&t.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let ip = tcp
            .peer_addr()
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
        t.tls
            .connect(t.name.clone(), tcp)
            .await
            .map(|s| (s, ip))
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok((stream, ip))) => {
            metrics::counter!("sbc_tls_handshakes_total", "side" => "outbound").increment(1);
            info!(target_addr = %t.addr, "connected to route target");
            run_connection(
                conn,
                ConnKind::Outbound { target },
                ip,
                stream,
                events,
                settings,
                None,
            )
            .await;
        }
        Ok(Err(error)) => {
            let _ = events.send(Event::ConnectFailed { target, error }).await;
        }
        Err(_) => {
            let _ = events
                .send(Event::ConnectFailed {
                    target,
                    error: "timed out".into(),
                })
                .await;
        }
    }
}
