//! One transport connection: the accept loop, the TLS handshake and recognition, and the
//! reader that frames, parses and screens each message before the core sees it.
//!
//! Owns: per-connection state (read buffer, framer, message deadline, malformed run), the
//! per-source table of connections holding an incomplete message ([`SlowSources`]) and
//! the load screens a reader applies ([`Guards`], `screen`). Must not: make protocol
//! decisions (the B2BUA does) or hold anything after the connection closes.

use super::*;

/// Time allowed for a TLS handshake before the connection is dropped: generous for a
/// trunk across an ocean, short enough that half-open handshakes cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Retry-After for refusals because the core's queue is deep: it drains in well under a
/// second, so the shortest honest value.
pub(super) const QUEUE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Consecutive malformed messages after which a connection is closed: a peer with a bug
/// gets its 400s, a garbage flood is cut off.
pub const MAX_MALFORMED_PER_CONNECTION: u32 = 32;

/// Read buffer per connection.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// Connections holding an incomplete message, per source IP. An entry exists only while
/// one of its source's connections holds a [`PartialSlot`], so the table is bounded by the
/// open connections (themselves bounded per source by the flood guard).
#[derive(Debug, Clone)]
pub(super) struct SlowSources {
    pub(super) held: Arc<Mutex<HashMap<IpAddr, u32>>>,
    pub(super) max: u32,
}

/// One connection's place in [`SlowSources`]; released on drop.
#[derive(Debug)]
pub(super) struct PartialSlot {
    pub(super) owner: SlowSources,
    pub(super) source: IpAddr,
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
    pub(super) fn new(max: u32) -> SlowSources {
        SlowSources {
            held: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // Plain counters, consistent at every step: a poisoned lock is safe to keep using.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more connection of `source` holding an incomplete message, or
    /// `None` if the source holds its maximum already.
    pub(super) fn hold(&self, source: IpAddr) -> Option<PartialSlot> {
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
    pub(super) fn total(&self) -> usize {
        self.lock().values().map(|n| *n as usize).sum()
    }
}

/// Shared per-connection settings.
#[derive(Clone)]
pub(super) struct ConnSettings {
    pub(super) max_message_bytes: usize,
    pub(super) limits: Limits,
    pub(super) idle: Duration,
    /// `sip.message_timeout_ms`: first byte to last byte of one message.
    pub(super) message_timeout: Duration,
    pub(super) guards: Guards,
    /// Resolver of route targets given by name (outbound connections only).
    pub(super) dns: Dns,
}

/// Load and abuse protection that readers apply before a message reaches the core.
#[derive(Clone)]
pub(super) struct Guards {
    pub(super) flood: FloodGuard,
    /// `overload.max_core_queue` (reloadable).
    pub(super) max_core_queue: Arc<AtomicUsize>,
    /// The admission control in use (swapped on reload): each tenant's limits are read
    /// from it when a connection starts.
    pub(super) admission: Arc<RwLock<Arc<Admission>>>,
    /// Inbound connections holding an incomplete message, per source.
    pub(super) slow: SlowSources,
    /// Aggregation of the log lines a peer can trigger.
    pub(super) logs: Logs,
}

impl Guards {
    pub(super) fn new(config: &Config, admission: Arc<RwLock<Arc<Admission>>>) -> Guards {
        report_limits(config);
        Guards {
            flood: FloodGuard::new(config.flood_guard.clone()),
            max_core_queue: Arc::new(AtomicUsize::new(config.overload.max_core_queue)),
            admission,
            slow: SlowSources::new(config.sip.max_partial_connections_per_source),
            logs: Logs::new(),
        }
    }

    pub(super) fn reload(&self, config: &Config) {
        report_limits(config);
        self.flood.reconfigure(config.flood_guard.clone());
        self.max_core_queue
            .store(config.overload.max_core_queue, Ordering::Relaxed);
    }

    pub(super) fn limits_of(&self, tenant: &TenantId) -> Option<TenantLimits> {
        self.admission
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .usage(tenant)
            .map(|u| u.limits)
    }
}

/// What an inbound connection's reader checks per request.
pub(super) struct InboundCheck {
    pub(super) source: IpAddr,
    /// The tenant as a metric label and log field (made once per connection).
    pub(super) tenant: String,
    /// Requests per second on this connection (`requests_per_second_per_connection`).
    pub(super) rate: Option<TokenBucket>,
}

/// A request that starts something new (not part of an existing dialog or transaction):
/// the only kind refused for load. ACK, BYE, CANCEL and in-dialog requests always pass.
pub(super) fn starts_something(msg: &SipMessage) -> bool {
    match msg.method() {
        Some(Method::Ack | Method::Bye | Method::Cancel | Method::Prack) | None => false,
        Some(_) => msg.header("to").and_then(tag).is_none(),
    }
}

/// What an accepted connection needs besides its socket: the listener, its TLS (`None`:
/// a plain TCP listener), recognition, and the way to the core.
#[derive(Clone)]
pub(super) struct Acceptance {
    pub(super) listener_index: usize,
    pub(super) tls: Option<SharedAcceptor>,
    pub(super) recognizer: Arc<RwLock<Arc<Recognizer>>>,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) conn_ids: Arc<AtomicU64>,
    pub(super) settings: ConnSettings,
}

/// Accept connections of a TLS or plain TCP listener: the flood guard's per-source slot,
/// then (TLS) the handshake, then recognition and the reader, the same for both.
pub(super) async fn accept_loop(
    socket: TcpListener,
    a: Acceptance,
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
        let slot = match a
            .settings
            .guards
            .flood
            .connection(peer.ip(), Instant::now())
        {
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
        let acceptor = a
            .tls
            .as_ref()
            .map(|t| t.read().unwrap_or_else(|p| p.into_inner()).clone());
        let recognizer = a
            .recognizer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let a = a.clone();
        let conn = ConnId(a.conn_ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let logs = &a.settings.guards.logs;
            let Some(acceptor) = acceptor else {
                // Plain TCP: no handshake, recognised by source address only.
                let identity = PeerIdentity {
                    client_cert_der: None,
                    sni: None,
                    source: peer.ip(),
                };
                serve_inbound(conn, peer, &recognizer, &identity, tcp, &a).await;
                drop(slot);
                return;
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("sbc_tls_handshakes_failed_total", "side" => "inbound")
                        .increment(1);
                    log_first!(logs, warn, LogEvent::HandshakeFailed, peer.ip(), peer = %peer, error = %e, "inbound TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("sbc_tls_handshakes_failed_total", "side" => "inbound")
                        .increment(1);
                    log_first!(logs, warn, LogEvent::HandshakeTimeout, peer.ip(), peer = %peer, "inbound TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            metrics::counter!("sbc_tls_handshakes_total", "side" => "inbound", "kind" => crate::tls::handshake_kind(session.handshake_kind())).increment(1);
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
            serve_inbound(conn, peer, &recognizer, &identity, tls, &a).await;
            // The source's connection slot is held until here.
            drop(slot);
        });
    }
}

/// Recognise an inbound peer (a tenant or nobody), and the screens its requests pass.
pub(super) fn recognise(
    recognizer: &Recognizer,
    identity: &PeerIdentity<'_>,
    guards: &Guards,
) -> (Option<TenantId>, InboundCheck) {
    let peer = identity.source;
    let tenant = match recognizer.recognize(identity) {
        Ok(t) => {
            log_first!(guards.logs, info, LogEvent::PeerRecognised, peer, peer = %peer, tenant = %t, "connection recognised");
            Some(t)
        }
        Err(e) => {
            metrics::counter!("sbc_tenant_recognition_failed_total").increment(1);
            log_first!(guards.logs, warn, LogEvent::RecognitionFailed, peer, peer = %peer, reason = %e, "connection from unrecognised peer");
            None
        }
    };
    let rate = tenant.as_ref().and_then(|t| guards.limits_of(t)).map(|l| {
        let rps = l.requests_per_second_per_connection;
        TokenBucket::new(rps, rps.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
    });
    let check = InboundCheck {
        source: peer,
        tenant: tenant.as_ref().map(TenantId::to_string).unwrap_or_default(),
        rate,
    };
    (tenant, check)
}

/// Recognise an accepted stream (TLS or plain TCP) and pump it until it closes.
async fn serve_inbound<S>(
    conn: ConnId,
    peer: SocketAddr,
    recognizer: &Recognizer,
    identity: &PeerIdentity<'_>,
    stream: S,
    a: &Acceptance,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (tenant, check) = recognise(recognizer, identity, &a.settings.guards);
    let kind = ConnKind::Inbound {
        tenant,
        listener: a.listener_index,
    };
    run_connection(
        conn,
        kind,
        peer.ip(),
        stream,
        a.events.clone(),
        a.settings.clone(),
        Some(check),
    )
    .await;
}

/// Register a connection with the core, then pump it until it closes. Everything the
/// connection holds (read buffer, framer, partial-message slot) is local here and freed
/// when it returns.
pub(super) async fn run_connection<S>(
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

/// Screen a request from an inbound connection before it reaches the core: the per-source
/// flood guard, then (for requests that start something new) the core's queue depth and
/// the connection's request rate. `None`: pass it on. `Some(answer)`: it stops here, with
/// the 503 to send back if there is one.
pub(super) fn screen(
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
