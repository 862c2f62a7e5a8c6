//! UDP listeners: one socket each, a bounded receive path into the core, and one
//! pseudo-connection per source address so the B2BUA keeps its connection model.
//!
//! Owns: the socket, the table of sources ([`ConnId`] per `ip:port`, bounded by
//! [`MAX_UDP_SOURCES`], expired when idle and no call or transaction uses it), each
//! source's writer task, the screens a datagram passes (the flood guard per source IP and
//! recognition by source CIDR as on TLS, the core queue bound) and the answers to bad
//! datagrams, never larger than the datagram (no amplification towards a forged source;
//! for a source no tenant claims, this bounds the core's answers, its 403s, too).
//! Outbound: a UDP route target is a source too, opened by the pool as an
//! `Outbound` pseudo-connection, so its answers and in-dialog requests find their call.
//! Must not: make protocol decisions (the B2BUA does) or block on the core (a full queue
//! drops the datagram, counted).

use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::*;
use crate::transport::{answer_allowed, UdpDrop};

/// Sources a UDP listener tracks at once. Each holds a writer task and a little state
/// (~1 KiB); 16,384 covers every phone and trunk of a large site, and a spoofed-source
/// flood past it is dropped (counted) instead of growing memory.
pub(super) const MAX_UDP_SOURCES: usize = 16_384;

/// How often idle UDP sources are looked for (`sip.idle_timeout_secs` is their TTL).
pub(super) const UDP_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Messages queued for one source's writer: as on a stream connection.
const UDP_WRITE_QUEUE: usize = 256;

/// One source (`ip:port`) a UDP listener talks with.
struct Source {
    conn: ConnId,
    last: Instant,
    /// Inbound sources: what their requests are screened with.
    check: Option<InboundCheck>,
    close: Arc<Notify>,
    /// The flood guard's per-IP connection slot, held while the source is.
    _slot: Option<sbc_core::flood::ConnectionSlot>,
    /// An unrecognised source (its address may be forged): the size of its last datagram,
    /// which bounds what is sent back to it (the core's 403s included).
    answer_bound: Option<Arc<AtomicUsize>>,
}

/// A source about to be held (see [`UdpEndpoint::open`]).
struct NewSource {
    conn: ConnId,
    addr: SocketAddr,
    kind: ConnKind,
    check: Option<InboundCheck>,
    slot: Option<sbc_core::flood::ConnectionSlot>,
    answer_bound: Option<Arc<AtomicUsize>>,
}

#[derive(Default)]
struct SourceTable {
    by_addr: HashMap<SocketAddr, Source>,
    /// Resolved addresses of UDP route targets: a datagram from one is the target's.
    targets: HashMap<SocketAddr, TargetId>,
}

/// A UDP listener.
pub(super) struct UdpEndpoint {
    listener: usize,
    socket: Arc<UdpSocket>,
    table: Mutex<SourceTable>,
    acceptance: Acceptance,
    /// Receive buffer size: `sip.max_message_bytes` capped at a datagram's maximum.
    bound: usize,
}

fn drop_counted(reason: UdpDrop) {
    metrics::counter!("sbc_sip_udp_dropped_total", "reason" => reason.as_str()).increment(1);
}

impl UdpEndpoint {
    pub(super) fn new(listener: usize, socket: UdpSocket, acceptance: Acceptance) -> Arc<Self> {
        let bound = crate::transport::datagram_bound(acceptance.settings.max_message_bytes);
        Arc::new(UdpEndpoint {
            listener,
            socket: Arc::new(socket),
            table: Mutex::new(SourceTable::default()),
            acceptance,
            bound,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceTable> {
        // Plain maps, consistent at every step: a poisoned lock is safe to keep using.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sources idle for `ttl` or more.
    pub(super) fn idle(&self, now: Instant, ttl: Duration) -> Vec<ConnId> {
        self.lock()
            .by_addr
            .values()
            .filter(|s| now.saturating_duration_since(s.last) >= ttl)
            .map(|s| s.conn)
            .collect()
    }

    /// Close a source (its writer task forgets it and tells the core).
    pub(super) fn expire(&self, conn: ConnId) {
        if let Some(s) = self.lock().by_addr.values().find(|s| s.conn == conn) {
            s.close.notify_one();
        }
    }

    /// Receive datagrams until shutdown.
    pub(super) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // One byte more than the bound, so an oversized datagram is told from a full one.
        let mut buf = vec![0u8; self.bound + 1];
        loop {
            let got = tokio::select! {
                r = self.socket.recv_from(&mut buf) => r,
                _ = shutdown.changed() => return,
            };
            let (n, from) = match got {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable for an earlier send shows up here on some
                    // systems: not fatal.
                    debug!(error = %e, "UDP receive failed");
                    continue;
                }
            };
            metrics::counter!("sbc_sip_messages_received_total").increment(1);
            if n > self.bound {
                drop_counted(UdpDrop::Oversized);
                continue;
            }
            self.datagram(&buf[..n], from);
        }
    }

    /// One datagram from `from`.
    fn datagram(self: &Arc<Self>, bytes: &[u8], from: SocketAddr) {
        if bytes
            .iter()
            .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
        {
            // A keep-alive (CRLF, or the empty datagrams some phones send): nothing to do.
            return;
        }
        let settings = &self.acceptance.settings;
        let msg = match SipMessage::parse_with_limits(bytes, &settings.limits) {
            Ok(m) => m,
            Err(error) => {
                self.malformed(bytes, from, &error);
                return;
            }
        };
        let Some(conn) = self.source_for(from, &msg, bytes.len()) else {
            return;
        };
        if let Err(TrySendError::Full(_)) = self
            .acceptance
            .events
            .try_send(Event::Core(Input::Message { conn, msg }))
        {
            drop_counted(UdpDrop::QueueFull);
        }
    }

    /// A datagram that does not parse: answered 400 when it is a request we can answer
    /// and the answer is no larger than it; else dropped. Counted either way.
    fn malformed(&self, bytes: &[u8], from: SocketAddr, error: &crate::message::ParseError) {
        metrics::counter!("sbc_sip_messages_rejected_total", "reason" => "malformed").increment(1);
        let logs = &self.acceptance.settings.guards.logs;
        let salvaged = salvage_request(bytes);
        let Some(resp) = malformed_response(error, salvaged.as_ref()) else {
            drop_counted(UdpDrop::NotSip);
            log_first!(logs, debug, LogEvent::MalformedMessage, from.ip(), peer = %from, reason = %error.reason_phrase(), "datagram is not SIP: dropped");
            return;
        };
        let out = resp.to_bytes();
        if !answer_allowed(bytes.len(), out.len()) {
            drop_counted(UdpDrop::AnswerTooLarge);
            return;
        }
        log_first!(logs, warn, LogEvent::MalformedRequest, from.ip(), peer = %from, reason = %error.reason_phrase(), "answered");
        let _ = self.socket.try_send_to(&out, from);
    }

    /// The pseudo-connection of `from`, made if new, with the request screens applied.
    /// `None`: the datagram stops here (dropped or answered, counted).
    fn source_for(
        self: &Arc<Self>,
        from: SocketAddr,
        msg: &SipMessage,
        len: usize,
    ) -> Option<ConnId> {
        let now = Instant::now();
        let guards = &self.acceptance.settings.guards;
        let mut table = self.lock();
        if let Some(s) = table.by_addr.get_mut(&from) {
            s.last = now;
            if let Some(b) = &s.answer_bound {
                b.store(len, Ordering::Relaxed);
            }
            let conn = s.conn;
            if let Some(check) = s.check.as_mut() {
                if let Some(answer) = screen(check, msg, &self.acceptance.events, guards) {
                    drop(table);
                    self.refused(msg, from, answer);
                    return None;
                }
            }
            return Some(conn);
        }
        if table.by_addr.len() >= MAX_UDP_SOURCES {
            drop_counted(UdpDrop::SourceTableFull);
            return None;
        }
        let slot = match guards.flood.connection(from.ip(), now) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics::counter!("sbc_flood_refused_total", "reason" => refusal.as_str())
                    .increment(1);
                drop_counted(UdpDrop::Flood);
                return None;
            }
        };
        let (kind, mut check) = match table.targets.get(&from) {
            Some(target) => (ConnKind::Outbound { target: *target }, None),
            None => {
                let recognizer = self
                    .acceptance
                    .recognizer
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let identity = PeerIdentity {
                    client_cert_der: None,
                    sni: None,
                    source: from.ip(),
                };
                let (tenant, check) = recognise(&recognizer, &identity, guards);
                let kind = ConnKind::Inbound {
                    tenant,
                    listener: self.listener,
                };
                (kind, Some(check))
            }
        };
        if let Some(c) = check.as_mut() {
            if let Some(answer) = screen(c, msg, &self.acceptance.events, guards) {
                drop(table);
                self.refused(msg, from, answer);
                return None;
            }
        }
        let unrecognised = matches!(kind, ConnKind::Inbound { tenant: None, .. });
        let bound = unrecognised.then(|| Arc::new(AtomicUsize::new(len)));
        let conn = ConnId(self.acceptance.conn_ids.fetch_add(1, Ordering::Relaxed));
        let new = NewSource {
            conn,
            addr: from,
            kind,
            check,
            slot,
            answer_bound: bound,
        };
        if !self.open(&mut table, new) {
            drop_counted(UdpDrop::QueueFull);
            return None;
        }
        Some(conn)
    }

    /// A screened-out request: its 503 goes back only if no larger than the request.
    fn refused(&self, msg: &SipMessage, from: SocketAddr, answer: Option<SipMessage>) {
        drop_counted(UdpDrop::Flood);
        let Some(resp) = answer else { return };
        let (req, out) = (msg.to_bytes(), resp.to_bytes());
        if answer_allowed(req.len(), out.len()) {
            let _ = self.socket.try_send_to(&out, from);
        }
    }

    /// Hold a new source: its writer task, and its registration with the core (which
    /// must get through now, or the source is not made).
    fn open(self: &Arc<Self>, table: &mut SourceTable, new: NewSource) -> bool {
        let NewSource {
            conn,
            addr,
            kind,
            check,
            slot,
            answer_bound,
        } = new;
        let (wtx, wrx) = mpsc::channel::<Bytes>(UDP_WRITE_QUEUE);
        let close = Arc::new(Notify::new());
        let registered = self.acceptance.events.try_send(Event::Registered {
            conn,
            kind,
            handle: ConnHandle {
                writer: wtx,
                close: close.clone(),
                peer: addr.ip(),
            },
        });
        if registered.is_err() {
            return false;
        }
        table.by_addr.insert(
            addr,
            Source {
                conn,
                last: Instant::now(),
                check,
                close: close.clone(),
                _slot: slot,
                answer_bound: answer_bound.clone(),
            },
        );
        metrics::gauge!("sbc_sip_udp_sources").set(table.by_addr.len() as f64);
        tokio::spawn(self.clone().writer(conn, addr, wrx, close, answer_bound));
        true
    }

    /// Send a source's messages until the core closes it (or drops its handle).
    async fn writer(
        self: Arc<Self>,
        conn: ConnId,
        addr: SocketAddr,
        mut rx: mpsc::Receiver<Bytes>,
        close: Arc<Notify>,
        answer_bound: Option<Arc<AtomicUsize>>,
    ) {
        let closed_here = loop {
            tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => {
                        if answer_bound
                            .as_ref()
                            .is_some_and(|l| !answer_allowed(l.load(Ordering::Relaxed), b.len()))
                        {
                            drop_counted(UdpDrop::AnswerTooLarge);
                            continue;
                        }
                        if let Err(e) = self.socket.send_to(&b, addr).await {
                            debug!(error = %e, peer = %addr, "UDP send failed");
                        }
                    }
                    None => break false,
                },
                _ = close.notified() => break true,
            }
        };
        {
            let mut table = self.lock();
            if table.by_addr.get(&addr).is_some_and(|s| s.conn == conn) {
                table.by_addr.remove(&addr);
            }
            metrics::gauge!("sbc_sip_udp_sources").set(table.by_addr.len() as f64);
        }
        if closed_here {
            let _ = self
                .acceptance
                .events
                .send(Event::Core(Input::Closed { conn }))
                .await;
        }
    }

    /// Open the pseudo-connection to a UDP route target at `addr` (`host:port`; a name
    /// is resolved, first address): its answers and requests then arrive as `Outbound`.
    pub(super) async fn open_outbound(
        self: Arc<Self>,
        conn: ConnId,
        target: TargetId,
        resolved: SocketAddr,
    ) -> Result<(), String> {
        let mut table = self.lock();
        table.targets.insert(resolved, target);
        if let Some(old) = table.by_addr.remove(&resolved) {
            // The target had talked to us first (an inbound source): it is the target's.
            old.close.notify_one();
        }
        if table.by_addr.len() >= MAX_UDP_SOURCES {
            drop_counted(UdpDrop::SourceTableFull);
            return Err("UDP source table full".into());
        }
        let kind = ConnKind::Outbound { target };
        let new = NewSource {
            conn,
            addr: resolved,
            kind,
            check: None,
            slot: None,
            answer_bound: None,
        };
        if self.open(&mut table, new) {
            Ok(())
        } else {
            Err("core queue full".into())
        }
    }

    /// Forget the addresses of targets no route names any more.
    pub(super) fn retire_targets(&self, retired: &[TargetId]) {
        self.lock().targets.retain(|_, t| !retired.contains(t));
    }
}

use tokio::sync::mpsc::error::TrySendError;
