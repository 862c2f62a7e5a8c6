//! The SIP server: listeners (TLS, and plain TCP or UDP for inside networks),
//! connections, the outbound connection pool, and the task that drives the sans-IO
//! [`B2bua`].
//!
//! Owns: sockets, TLS handshakes, stream framing per connection, UDP sources as
//! pseudo-connections, timers (tokio clock).
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
//!
//! Split by the state each part owns: `connection.rs` (accept, handshake, the reader and
//! its screens, slow sources; plain TCP is the same path without the handshake),
//! `udp.rs` (UDP sockets, their sources and bounded receive path), `core_loop.rs` (the
//! B2BUA driver, writers and the outbound pool), `logs.rs` (close reasons and aggregated
//! log lines), `tls_listeners.rs` (each TLS listener's acceptor, swapped for new
//! handshakes on reload and by the certificate file poll, and its session resumption
//! state); this file starts the parts and holds the handle operators and the binary use.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
use crate::transport::Transport;

#[macro_use]
mod logs;
mod connection;
mod core_loop;
mod recording;
mod standby;
mod tls_listeners;
mod udp;

pub use connection::{HANDSHAKE_TIMEOUT, MAX_MALFORMED_PER_CONNECTION};

use connection::*;
use core_loop::*;
use logs::*;
use tls_listeners::*;
use udp::*;

/// Inputs queued for the core task. Readers wait when it is full, which slows their TCP
/// peers (backpressure) instead of growing memory; past `overload.max_core_queue` new
/// INVITEs are refused 503 by the readers themselves.
const CORE_QUEUE: usize = CORE_QUEUE_CAPACITY;

enum Event {
    Core(Input),
    Registered {
        conn: ConnId,
        kind: ConnKind,
        handle: ConnHandle,
    },
    ConnectFailed {
        target: TargetId,
        transport: Transport,
        conn: ConnId,
        error: String,
    },
    Reload {
        config: Arc<Config>,
        routes: Vec<PreparedRoute>,
    },
    /// Calls claimed from a dead peer, to install (hot standby).
    Install {
        calls: Vec<sbc_core::standby::TakenCall>,
        reply: tokio::sync::oneshot::Sender<sbc_core::standby::InstallReport>,
    },
    /// Calls another node owns now, to drop silently.
    Fence(Vec<sbc_core::media::CallRef>),
}

/// The core's handle on a connection: its write queue and a way to close it.
struct ConnHandle {
    writer: mpsc::Sender<Bytes>,
    close: Arc<Notify>,
    /// The peer's address: the source of this connection's aggregated log lines.
    peer: IpAddr,
}

/// A running SIP server.
#[derive(Debug)]
pub struct ServerHandle {
    /// Bound listener addresses (TLS, TCP or UDP, as configured), in config order.
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
    /// Each listener's TLS acceptor and the material it was built from (swapped on
    /// reload and by the certificate poll), in config order.
    tls: Arc<TlsListeners>,
    /// The config in force, as the certificate poll sees it.
    current: Arc<RwLock<Arc<Config>>>,
    /// Serialises reloads and certificate poll passes.
    reload_lock: Arc<tokio::sync::Mutex<()>>,
    /// Route targets' health, published by the core for the admin plane.
    trunks: Arc<sbc_core::trunks::TrunkBoard>,
    /// Calls' SIPREC recording status, published by the core for the admin plane.
    recordings: Arc<crate::b2bua::recording::RecordingBoard>,
    /// The live calls (admin hooks), so a command on a live call of a tenant without
    /// recording is told apart from one on an unknown call.
    registry: Option<Arc<CallRegistry>>,
}

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
    /// on; established connections keep theirs). Everything is prepared first: if a route
    /// or listener certificate cannot be used, nothing is applied and the error says
    /// which (a refused certificate is counted in `sbc_tls_reload_total`). Listener
    /// addresses and the set of listeners need a restart (see `sbc_core::reload::diff`):
    /// when the listener names differ from the running ones, their TLS settings are left
    /// as they are. Returns one line per certificate or CA bundle swapped ("listener
    /// tls-0: certificate and key swapped, not after 2027-03-01 00:00:00 UTC").
    pub async fn reload(&self, config: Arc<Config>) -> Result<Vec<String>, SipError> {
        let _reload = self.reload_lock.lock().await;
        let routes = crate::targets::prepare(&config)?;
        let prepared = if self.tls.same_set(&config.listeners) {
            self.tls.prepare(&config.listeners)?
        } else {
            Vec::new()
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
        let mut changes = self.tls.install(prepared);
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            config.clone(),
        );
        let routes_changed = route_ca_changes(&old, &config);
        for _ in &routes_changed {
            metrics::counter!("sbc_tls_reload_total", "result" => "swapped").increment(1);
        }
        changes.extend(routes_changed);
        Ok(changes)
    }

    /// A tenant's usage against its limits, as admission sees it now.
    pub fn usage(&self, tenant: &TenantId) -> Option<sbc_core::admission::Usage> {
        self.admission
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .usage(tenant)
    }

    /// Route targets' health as the core last published it (`GET /v1/trunks`).
    pub fn trunks(&self) -> Arc<sbc_core::trunks::TrunkBoard> {
        self.trunks.clone()
    }

    /// The admin plane's handle on SIPREC recording (status and start / stop / pause /
    /// resume commands, handed to the core without blocking).
    pub fn recording_control(&self) -> Arc<dyn sbc_core::recording::RecordingControl> {
        Arc::new(recording::Control {
            board: self.recordings.clone(),
            events: self.events.clone(),
            registry: self.registry.clone(),
        })
    }

    /// The hot standby's [`sbc_core::standby::CallInstaller`] over the running core:
    /// claimed calls are installed (and fenced ones dropped) by the core task between two
    /// inputs.
    pub fn installer(&self) -> sbc_core::standby::SharedInstaller {
        Arc::new(standby::Installer {
            events: self.events.clone(),
        })
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

/// What the SIP server is wired to besides its config.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Calls are recorded here for the admin plane.
    pub registry: Option<Arc<CallRegistry>>,
    /// Readiness and drain (new calls refused 503 while draining).
    pub drain: Option<Arc<DrainState>>,
    /// Media anchoring; `None`: SDP passes untouched.
    pub media: Option<Arc<dyn MediaControl>>,
    /// Cluster-wide admission (`[cluster]`); `None`: local admission alone.
    pub cluster: Option<Arc<dyn sbc_core::cluster::ClusterAdmission>>,
    /// SIPREC recording's media (the relay's forks); `None`: no call is recorded.
    pub recording: Option<Arc<dyn sbc_core::recording::RecordingMedia>>,
    /// The audit log recording events go to (through a bounded queue drained by its own
    /// thread, never written on the core loop); `None`: log lines only.
    pub audit: Option<Arc<dyn sbc_core::audit::AuditSink>>,
    /// Hot standby: each call's dialog part goes here at every change; `None`: not
    /// replicated.
    pub replica: Option<sbc_core::standby::SharedReplicaSink>,
    /// Hot standby: restores a taken-over call's media before its dialogs are installed;
    /// `None`: a claimed call with media is refused.
    pub media_takeover: Option<sbc_core::standby::SharedMediaTakeover>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("registry", &self.registry.is_some())
            .field("drain", &self.drain.is_some())
            .field("media", &self.media.is_some())
            .field("cluster", &self.cluster.is_some())
            .field("recording", &self.recording.is_some())
            .field("audit", &self.audit.is_some())
            .field("replica", &self.replica.is_some())
            .field("media_takeover", &self.media_takeover.is_some())
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
        dns: Dns::new(&config.sip.dns),
    };

    // Routes and their connectors.
    let mut targets = TargetTable::default();
    let (routes, _) = targets.install(
        crate::targets::prepare(&config)?,
        &std::collections::HashSet::new(),
    );
    let recognizer = Arc::new(RwLock::new(Arc::new(Recognizer::new(&config))));
    let tls = Arc::new(TlsListeners::new(&config)?);

    let mut tasks = Vec::new();
    let mut sip_addrs = Vec::new();
    let mut advertised = Vec::new();
    let mut udp = Vec::new();
    for ((index, listener), listener_tls) in config.listeners.iter().enumerate().zip(&tls.0) {
        let acceptance = Acceptance {
            listener_index: index,
            tls: listener_tls.acceptor.clone(),
            recognizer: recognizer.clone(),
            events: events_tx.clone(),
            conn_ids: conn_ids.clone(),
            settings: settings.clone(),
        };
        let bind_err = |source| SipError::Bind {
            addr: listener.address,
            source,
        };
        let local = if listener.transport == Transport::Udp {
            let socket = tls_listeners::bind_udp(listener).await.map_err(bind_err)?;
            let local = socket.local_addr().map_err(bind_err)?;
            let ep = UdpEndpoint::new(index, socket, acceptance);
            tasks.push(tokio::spawn(ep.clone().run(shutdown_rx.clone())));
            udp.push(ep);
            local
        } else {
            let socket = tls_listeners::bind_tcp(listener).await.map_err(bind_err)?;
            let local = socket.local_addr().map_err(bind_err)?;
            tasks.push(tokio::spawn(accept_loop(
                socket,
                acceptance,
                shutdown_rx.clone(),
            )));
            local
        };
        let host = match &listener.advertised_host {
            Some(h) => h.clone(),
            None => match local.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            },
        };
        advertised.push(format!("{host}:{}", local.port()));
        sip_addrs.push(local);
        info!(listener = %listener.name, address = %local, transport = listener.transport.as_str(), "SIP listening");
    }

    tasks.push(tokio::spawn(watch_certificates(
        tls.clone(),
        shutdown_rx.clone(),
    )));
    let current = Arc::new(RwLock::new(config.clone()));
    let reload_lock = Arc::new(tokio::sync::Mutex::new(()));
    tasks.push(tokio::spawn(poll_certificates(
        PollShared {
            tls: tls.clone(),
            current: current.clone(),
            reload_lock: reload_lock.clone(),
            events: events_tx.clone(),
        },
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
            transports: config.listeners.iter().map(|l| l.transport).collect(),
            redaction: config.logging.redact_numbers,
            seed: rand::random(),
            wall_clock: crate::b2bua::WallClock::system(),
        },
        Arc::new(routes),
        admission,
    );
    let mut core = core;
    let recordings = Arc::new(crate::b2bua::recording::RecordingBoard::default());
    if let Some(rec_media) = hooks.recording {
        let recorders = recording::recorders(&config, &core.routes());
        core.set_recording(rec_media, recorders, recordings.clone());
    }
    if let Some(sink) = hooks.audit {
        let queue = sbc_core::audit::AuditQueue::start(sink)
            .map_err(|e| SipError::Config(format!("audit writer thread: {e}")))?;
        core.set_audit(Arc::new(queue));
    }
    core.set_standby(hooks.replica, hooks.media_takeover);
    let trunks = Arc::new(sbc_core::trunks::TrunkBoard::new());
    core.set_trunk_board(trunks.clone());
    core.set_sip_policies(sip_policies(&config));
    let registry_for_control = hooks.registry.clone();
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
    if let Some(cluster) = hooks.cluster {
        // Cluster answers come in as core inputs, like media events.
        let (tx, mut rx) = mpsc::unbounded_channel();
        cluster.set_answer_sink(Arc::new(move |a| {
            let _ = tx.send(a);
        }));
        let events = events_tx.clone();
        let mut shutdown = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let answer = tokio::select! {
                    a = rx.recv() => match a { Some(a) => a, None => return },
                    _ = shutdown.changed() => return,
                };
                if events
                    .send(Event::Core(Input::Cluster(answer)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
        core.set_cluster(cluster);
    }
    let stats = Arc::new(Mutex::new(B2buaStats::default()));
    let core_admission = shared_admission.clone();
    tasks.push(tokio::spawn(core_loop(
        core,
        core_admission,
        udp,
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
        tls,
        current,
        reload_lock,
        trunks,
        recordings,
        registry: registry_for_control,
    })
}

/// Each listener's TLS acceptor (`None` for a plain TCP or UDP listener), in config
/// order; fails naming the listener whose certificate, key or client CA is unusable (a
/// certificate that does not match its key included).
fn listener_acceptors(config: &Config) -> Result<Vec<Option<TlsAcceptor>>, SipError> {
    config
        .listeners
        .iter()
        .map(|l| {
            if l.transport != Transport::Tls {
                return Ok(None);
            }
            tls::server_config(
                &l.certificate_pem,
                l.private_key.pem(),
                l.client_ca_pem.as_deref(),
                l.require_client_cert,
            )
            .map(|c| Some(TlsAcceptor::from(c)))
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

/// A certificate closer to expiry than this is warned about at every check.
pub const CERTIFICATE_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// How often listener certificates are checked for expiry.
const CERTIFICATE_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Publish each listener certificate's time to expiry as a gauge (the certificate in use:
/// a swap updates it at once), and warn from 30 days before it (at start, then hourly).
async fn watch_certificates(tls: Arc<TlsListeners>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tls.publish_expiry();
        tokio::select! {
            _ = tokio::time::sleep(CERTIFICATE_CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}
