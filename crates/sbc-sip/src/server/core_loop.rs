//! The task that drives the sans-IO B2BUA: it feeds inputs with `now`, carries out the
//! outputs, and owns the outbound connection pool to route targets.
//!
//! Owns: the writers of every connection, the pool (one connection per target and
//! transport, messages queued while it connects), the target connectors and the resolver
//! of targets given by name ([`Dns`]). A message for a target goes over the transport its
//! top Via names (the B2BUA applied RFC 3261 §18.1.1 there): a UDP target's
//! pseudo-connection on the first UDP listener's socket, or a plain TCP connection to the
//! same `host:port` for its large requests; a `sips:` target always over TLS. An inbound
//! connection no tenant claims, from a target's address (numeric, or one of our
//! connections to it was opened to: [`TargetTable::targets_at`]), registers as that
//! trunk's ([`ConnKind::Trunk`]). Idle UDP
//! sources no call uses are expired here, because only the core knows which are in use.
//! Must not: block on a peer (a full write queue drops the message, counted) or on DNS: a
//! target given by name is resolved inside its connection task ([`connect`]), so the core
//! goes on serving every other call meanwhile.

use super::*;
use crate::targets::Dest;
use sbc_core::config::DnsSettings;

/// Longest one outbound connection attempt may take over all its candidates (DNS
/// included): 32 s, timer B at the default T1, after which the INVITE that asked for the
/// connection has failed anyway. Each candidate also has [`HANDSHAKE_TIMEOUT`].
pub(super) const OUTBOUND_CONNECT_BUDGET: Duration = Duration::from_secs(32);

/// The resolver of route targets given by domain name (RFC 3263), rebuilt when a reload
/// changes `sip.dns_servers` or `sip.dns_timeout_ms` (its cache starts empty then).
#[derive(Clone)]
pub(super) struct Dns(Arc<RwLock<(DnsSettings, Built)>>);

/// A resolver made from the settings, or why none could be (no nameserver).
type Built = Result<Arc<sbc_dns::Resolver>, String>;

impl Dns {
    pub(super) fn new(settings: &DnsSettings) -> Dns {
        Dns(Arc::new(RwLock::new((
            settings.clone(),
            Dns::build(settings),
        ))))
    }

    fn build(settings: &DnsSettings) -> Result<Arc<sbc_dns::Resolver>, String> {
        let cfg = sbc_dns::DnsConfig {
            servers: settings.servers.clone(),
            timeout: settings.timeout,
        };
        sbc_dns::Resolver::new(&cfg).map(Arc::new).map_err(|e| {
            // Only targets given by name need it: they fail to connect (logged, counted);
            // targets given by IP are unaffected.
            warn!(event = "dns_unavailable", error = %e, "no DNS resolver: route targets given by name cannot be reached");
            e.to_string()
        })
    }

    /// Take the reloaded settings; a change rebuilds the resolver.
    pub(super) fn reload(&self, settings: &DnsSettings) {
        let mut cur = self.0.write().unwrap_or_else(|p| p.into_inner());
        if cur.0 != *settings {
            *cur = (settings.clone(), Dns::build(settings));
            info!(
                event = "dns_reloaded",
                servers = settings.servers.len(),
                timeout_ms = settings.timeout.as_millis() as u64,
                "DNS resolver settings replaced"
            );
        }
    }

    fn resolver(&self) -> Result<Arc<sbc_dns::Resolver>, String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }
}

/// Messages queued for one connection's writer. At ~1 KB a message this is 1 MB; a peer
/// that lets its queue fill is not reading and loses messages (counted) rather than
/// stalling the core.
pub(super) const WRITE_QUEUE: usize = 1024;

pub(super) enum PoolEntry {
    Connecting(Vec<SipMessage>),
    Up(ConnId),
}

/// A pooled connection's key: a target, and the transport used to it.
pub(super) type PoolKey = (TargetId, Transport);

/// The transport a message for `t` goes over: what its Via names, except that a `sips:`
/// target is only ever reached over TLS and a plain one never over TLS.
fn transport_for(t: &Target, msg: &SipMessage) -> Transport {
    match (t.transport, crate::transport::via_transport(msg)) {
        (Transport::Udp, Some(Transport::Tcp)) => Transport::Tcp,
        (tr, _) => tr,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn core_loop(
    mut core: B2bua,
    shared_admission: Arc<RwLock<Arc<Admission>>>,
    udp: Vec<Arc<UdpEndpoint>>,
    mut targets: TargetTable,
    mut events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    conn_ids: Arc<AtomicU64>,
    settings: ConnSettings,
    stats: Arc<Mutex<B2buaStats>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut writers: HashMap<ConnId, ConnHandle> = HashMap::new();
    let mut pool: HashMap<PoolKey, PoolEntry> = HashMap::new();
    let mut pooled_conn: HashMap<ConnId, PoolKey> = HashMap::new();
    // Registrations of outbound connections say which pool entry they fill.
    let mut opening: HashMap<ConnId, PoolKey> = HashMap::new();
    let tokio_start = tokio::time::Instant::now();
    let std_start = Instant::now();
    let mut sweep = tokio::time::interval(UDP_SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = sweep.tick(), if !udp.is_empty() => {
                let used = core.conns_in_use();
                for ep in &udp {
                    for conn in ep.idle(Instant::now(), settings.idle) {
                        if !used.contains(&conn) {
                            ep.expire(conn);
                        }
                    }
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        let now = Instant::now();
        match event {
            None => core.handle_timeout(now),
            Some(Event::Registered { conn, kind, handle }) => {
                let kind = trunk_or(kind, handle.peer, conn, &targets);
                if let ConnKind::Outbound { target } = &kind {
                    targets.learn_address(*target, handle.peer);
                }
                writers.insert(conn, handle);
                if let ConnKind::Outbound { target } = &kind {
                    // A source a UDP target talked from unasked fills the UDP entry.
                    let key = opening.remove(&conn).unwrap_or((*target, Transport::Udp));
                    pooled_conn.insert(conn, key);
                    if let Some(PoolEntry::Connecting(queued)) =
                        pool.insert(key, PoolEntry::Up(conn))
                    {
                        for msg in queued {
                            write_to(&writers, &settings.guards.logs, conn, &msg);
                        }
                    }
                }
                core.handle_input(now, Input::Connected { conn, kind });
            }
            Some(Event::ConnectFailed {
                target,
                transport,
                conn,
                error,
            }) => {
                opening.remove(&conn);
                // Counted for every transport, as the metric's help says ("or, outbound,
                // connections"); the log line names the transport.
                metrics::counter!("sbc_tls_handshakes_failed_total", "side" => "outbound")
                    .increment(1);
                let addr = targets.get(target).map_or("", |t| t.addr.as_str());
                warn!(event = "target_connect_failed", target_addr = %addr, transport = transport.as_str(), error = %error, "cannot reach route target");
                if let Some(PoolEntry::Connecting(queued)) = pool.remove(&(target, transport)) {
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
                    // No route names it and no call uses it: its connections can go.
                    for tr in [Transport::Tls, Transport::Tcp, Transport::Udp] {
                        if let Some(PoolEntry::Up(conn)) = pool.remove(&(*id, tr)) {
                            if let Some(h) = writers.remove(&conn) {
                                h.close.notify_one();
                            }
                        }
                    }
                }
                for ep in &udp {
                    ep.retire_targets(&done.retired);
                }
                info!(
                    event = "routes_reloaded",
                    targets_kept = done.kept,
                    targets_new = done.added,
                    targets_retired = done.retired.len(),
                    "routes replaced: new calls take them, running calls keep their target"
                );
                let recorders = super::recording::recorders(&config, &table);
                core.reconfigure(Arc::new(table), admission);
                core.set_recorders(recorders);
                core.set_media_policies(media_policies(&config));
                core.set_sip_policies(sip_policies(&config));
                settings.guards.reload(&config);
                settings.dns.reload(&config.sip.dns);
                info!(
                    event = "config_reloaded",
                    tenants = config.tenants.len(),
                    "limits, flood guard, overload settings, media and header/body policies reloaded"
                );
            }
            Some(Event::Install { calls, reply }) => {
                let report = core.install(now, calls);
                let _ = reply.send(report);
            }
            Some(Event::Fence(calls)) => {
                core.fence(&calls);
            }
            Some(Event::Core(input)) => {
                if let Input::Closed { conn } = &input {
                    writers.remove(conn);
                    if let Some(key) = pooled_conn.remove(conn) {
                        if matches!(pool.get(&key), Some(PoolEntry::Up(c)) if c == conn) {
                            pool.remove(&key);
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
                Output::SendToTarget { target, msg } => {
                    let Some(t) = targets.get(target) else {
                        core.handle_input(now, Input::SendFailed { target, msg });
                        continue;
                    };
                    let key = (target, transport_for(t, &msg));
                    match pool.get_mut(&key) {
                        Some(PoolEntry::Up(conn)) => {
                            let conn = *conn;
                            if !write_to(&writers, &settings.guards.logs, conn, &msg) {
                                core.handle_input(now, Input::SendFailed { target, msg });
                            }
                        }
                        Some(PoolEntry::Connecting(queue)) => queue.push(msg),
                        None => {
                            pool.insert(key, PoolEntry::Connecting(vec![msg]));
                            let conn = ConnId(conn_ids.fetch_add(1, Ordering::Relaxed));
                            opening.insert(conn, key);
                            tokio::spawn(connect(
                                Dial {
                                    target,
                                    transport: key.1,
                                    t: t.clone(),
                                    conn,
                                    udp: udp.first().cloned(),
                                },
                                events_tx.clone(),
                                settings.clone(),
                            ));
                        }
                    }
                }
            }
        }
        if let Ok(mut s) = stats.lock() {
            *s = core.stats();
        }
    }
}

/// An inbound connection recognised as no tenant from a route target's address (a numeric
/// target, or one our connections to a named target were opened to) is that trunk's own
/// connection ([`ConnKind::Trunk`]); every other kind is kept.
fn trunk_or(kind: ConnKind, peer: IpAddr, conn: ConnId, targets: &TargetTable) -> ConnKind {
    let ConnKind::Inbound {
        tenant: None,
        listener,
    } = kind
    else {
        return kind;
    };
    let found = targets.targets_at(peer);
    if found.is_empty() {
        return kind;
    }
    info!(event = "trunk_connection", conn = %conn, peer = %peer, targets = found.len(), "inbound connection from a route target's address: served as that trunk");
    ConnKind::Trunk {
        targets: found,
        listener,
    }
}

/// Hand media events to the core. The channel from media is unbounded (one event per
/// call at most) and the core's is bounded: this waits for room rather than lose an
/// event, so a call whose media timed out is always torn down.
pub(super) async fn forward_media_events(
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
pub(super) fn write_to(
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

/// The addresses to try for `t`, in order: its IP, or its name resolved (RFC 3263) to the
/// candidates of its own transport (a UDP target's large requests go over TCP to the same
/// addresses, RFC 3261 §18.1.1).
async fn addresses(t: &Target, dns: &Dns) -> Result<Vec<SocketAddr>, String> {
    match &t.dest {
        Dest::Addr(sa) => Ok(vec![*sa]),
        Dest::Name(name) => {
            let resolver = dns.resolver()?;
            let candidates = resolver
                .candidates(name)
                .await
                .map_err(|e| format!("DNS: {e}"))?;
            let addrs: Vec<SocketAddr> = candidates
                .iter()
                .filter(|c| c.transport == t.transport)
                .map(|c| c.addr)
                .collect();
            if addrs.is_empty() {
                return Err(format!("DNS: no {} candidate for {name}", t.transport));
            }
            debug!(target_uri = %name, candidates = addrs.len(), "route target resolved");
            Ok(addrs)
        }
    }
}

/// One outbound connection to open.
pub(super) struct Dial {
    pub(super) target: TargetId,
    /// The transport to use (a UDP target's large requests: TCP).
    pub(super) transport: Transport,
    pub(super) t: Target,
    pub(super) conn: ConnId,
    /// The UDP listener UDP targets are sent from.
    pub(super) udp: Option<Arc<UdpEndpoint>>,
}

/// What opening a [`Dial`] gave.
enum Opened {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, SocketAddr),
    Tcp(TcpStream, SocketAddr),
    /// A UDP pseudo-connection, registered with its listener (no stream to pump here).
    Udp,
}

/// One stream connection to `addr` over `transport`: TCP, then TLS for a `sips:` target
/// (the certificate checked against the configured name for every address, RFC 5922 §4).
async fn open_stream(t: &Target, transport: Transport, addr: SocketAddr) -> Result<Opened, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    match (transport, &t.tls) {
        (Transport::Tls, Some(tls)) => tls
            .connector
            .connect(tls.name.clone(), tcp)
            .await
            .map(|s| Opened::Tls(Box::new(s), addr))
            .map_err(|e| e.to_string()),
        (Transport::Tls, None) => Err("TLS target without TLS settings".into()),
        _ => Ok(Opened::Tcp(tcp, addr)),
    }
}

/// Open `d`'s connection (TLS, plain TCP, or a UDP pseudo-connection) and pump it: the
/// target is resolved first, then each address tried in order (a refused, unreachable or
/// failed handshake moves on to the next; UDP takes the first). A failure comes back to
/// the core as `ConnectFailed`, queued messages as `SendFailed`.
pub(super) async fn connect(d: Dial, events: mpsc::Sender<Event>, settings: ConnSettings) {
    let Dial {
        target,
        transport,
        t,
        conn,
        udp,
    } = d;
    let failed = |error: String| Event::ConnectFailed {
        target,
        transport,
        conn,
        error,
    };
    let attempt = async {
        let addrs = addresses(&t, &settings.dns).await?;
        if transport == Transport::Udp {
            let ep = udp.ok_or_else(|| "no UDP listener to send from".to_string())?;
            let first = addrs.first().copied().ok_or("no address to send to")?;
            ep.open_outbound(conn, target, first).await?;
            return Ok(Opened::Udp);
        }
        let mut last = String::new();
        for addr in addrs {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, open_stream(&t, transport, addr)).await {
                Ok(Ok(opened)) => return Ok(opened),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: timed out"),
            }
            debug!(target_addr = %t.addr, candidate = %addr, error = %last, "route target candidate failed, trying the next");
        }
        Err(last)
    };
    let kind = ConnKind::Outbound { target };
    match tokio::time::timeout(OUTBOUND_CONNECT_BUDGET, attempt).await {
        Ok(Ok(Opened::Udp)) => {}
        Ok(Ok(Opened::Tls(stream, addr))) => {
            let handshake = crate::tls::handshake_kind(stream.get_ref().1.handshake_kind());
            metrics::counter!("sbc_tls_handshakes_total", "side" => "outbound", "kind" => handshake)
                .increment(1);
            info!(target_addr = %t.addr, connected_to = %addr, "connected to route target");
            run_connection(conn, kind, addr.ip(), *stream, events, settings, None).await;
        }
        Ok(Ok(Opened::Tcp(stream, addr))) => {
            info!(target_addr = %t.addr, connected_to = %addr, transport = "tcp", "connected to route target");
            run_connection(conn, kind, addr.ip(), stream, events, settings, None).await;
        }
        Ok(Err(error)) => {
            let _ = events.send(failed(error)).await;
        }
        Err(_) => {
            let _ = events.send(failed("timed out".into())).await;
        }
    }
}
