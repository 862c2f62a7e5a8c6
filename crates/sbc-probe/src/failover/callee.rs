//! The failover callee: a TLS SIP UAS the gateways route to, answering one call (180, then
//! 200 after an optional ring time, so a failover can hit the early dialog), sending its
//! own SRTP stream and reporting every in-dialog request it gets with its CSeq (see the
//! module docs of [`super`]). Gateways connect to it; replies go on the connection the
//! request came on, else on the newest one (a new owner re-dials the trunk).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sbc_sip::message::{response_to, Method, SipMessage};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    ms_since, spawn_link, Command, Emit, Input, Inputs, LinkEvent, LinkHandle, LinkId, MediaSide,
    CALLEE_STREAM, CALLER_STREAM, MAX_QUEUED, MAX_RUN,
};
use crate::client::Dialog;
use crate::conn::{token, uri_of};
use crate::media::Leg;
use crate::sdes::{self, LocalKey};
use crate::ProbeError;

/// A gateway's TLS handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// Connections held at once (each gateway pools one or a few).
const MAX_LINKS: usize = 16;

/// Events queued from connection tasks.
const EVENT_QUEUE: usize = 64;

/// How the callee answers.
#[derive(Debug, Clone)]
pub struct CalleeOptions {
    pub tls: Arc<rustls::ServerConfig>,
    /// Where media binds (and what the answer says).
    pub media_ip: IpAddr,
    /// Time between the 180 and the 200 (zero: both at once).
    pub ring: Duration,
    /// The callee stops (and reports) after this, at most [`MAX_RUN`].
    pub max_run: Duration,
    /// The first RTP sequence number sent (random when `None`).
    pub first_seq: Option<u16>,
}

struct Call {
    dialog: Dialog,
    invite: SipMessage,
    to_tag: String,
    answer: Vec<u8>,
    answered: bool,
    /// The highest CSeq of the far side's requests so far.
    remote_cseq: u32,
    /// The gateway's current key (its inline form), to notice a re-key.
    rx_key: zeroize::Zeroizing<String>,
}

struct Callee<'a> {
    opts: CalleeOptions,
    local: SocketAddr,
    start: Instant,
    emit: Emit<'a>,
    links: HashMap<LinkId, LinkHandle>,
    newest: Option<LinkId>,
    outbox: Vec<SipMessage>,
    call: Option<Call>,
    media: MediaSide,
    ring_at: Option<Instant>,
    our_bye: Option<u32>,
    ended: Option<String>,
}

/// Serves `listener` until the call ends, a `stop` command, or `max_run`; then emits a
/// `report` line.
pub async fn run(
    listener: std::net::TcpListener,
    opts: CalleeOptions,
    mut commands: mpsc::Receiver<Command>,
    emit: Emit<'_>,
) -> Result<(), ProbeError> {
    let start = Instant::now();
    let deadline = start + opts.max_run.min(MAX_RUN);
    listener
        .set_nonblocking(true)
        .map_err(|e| ProbeError::io("callee listener", e))?;
    let listener =
        TcpListener::from_std(listener).map_err(|e| ProbeError::io("callee listener", e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ProbeError::io("callee listener", e))?;
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let acceptor = tokio::spawn(accept(listener, opts.tls.clone(), events_tx));
    let mut c = Callee {
        opts,
        local,
        start,
        emit,
        links: HashMap::new(),
        newest: None,
        outbox: Vec::new(),
        call: None,
        media: MediaSide::new(start),
        ring_at: None,
        our_bye: None,
        ended: None,
    };
    c.run_loop(Inputs::new(&mut events, &mut commands, deadline))
        .await;
    c.media.end().await;
    acceptor.abort();
    c.report();
    Ok(())
}

async fn accept(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    events: mpsc::Sender<LinkEvent>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut n = 0u64;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        n += 1;
        let (acceptor, events) = (acceptor.clone(), events.clone());
        tokio::spawn(async move {
            if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_WAIT, acceptor.accept(tcp)).await {
                let link = spawn_link(LinkId(n), tls, None, events.clone());
                let _ = events.send(LinkEvent::Opened(link)).await;
            }
        });
    }
}

impl Callee<'_> {
    async fn run_loop(&mut self, mut inputs: Inputs<'_>) {
        let far = inputs.deadline + Duration::from_secs(1);
        while self.ended.is_none() {
            let ring_at = self.ring_at.unwrap_or(far);
            let media = &mut self.media;
            tokio::select! {
                input = inputs.next() => match input {
                    Input::Event(ev) => self.on_event(ev),
                    Input::Command(cmd) => self.on_command(cmd),
                    Input::Deadline => self.ended = Some("max_run".into()),
                    Input::EventsClosed => self.ended = Some("events closed".into()),
                },
                _ = tokio::time::sleep_until(ring_at), if self.ring_at.is_some() => {
                    self.ring_at = None;
                    self.answer();
                }
                _ = media.step(far) => {}
            }
        }
    }

    fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Opened(link) => {
                (self.emit)(
                    serde_json::json!({"event": "connection", "t_ms": ms_since(self.start), "link": link.id.0}),
                );
                for m in std::mem::take(&mut self.outbox) {
                    link.send(m);
                }
                if self.links.len() < MAX_LINKS {
                    self.newest = Some(link.id);
                    self.links.insert(link.id, link);
                }
            }
            LinkEvent::Closed(id, why) => {
                self.links.remove(&id);
                (self.emit)(
                    serde_json::json!({"event": "disconnected", "t_ms": ms_since(self.start), "link": id.0, "why": why}),
                );
            }
            LinkEvent::Message(id, m) => {
                self.newest = Some(id);
                if m.is_request() {
                    self.on_request(id, &m);
                } else {
                    self.on_response(&m);
                }
            }
        }
    }

    /// Sends on `via` when it is open, else on the newest open connection, else queues.
    fn send(&mut self, via: Option<LinkId>, m: SipMessage) {
        let open = |id: Option<LinkId>| id.and_then(|i| self.links.get(&i)).filter(|l| l.is_open());
        if let Some(l) = open(via).or_else(|| open(self.newest)) {
            if l.send(m.clone()) {
                return;
            }
        }
        if self.outbox.len() < MAX_QUEUED {
            self.outbox.push(m);
        }
    }

    fn contact(&self) -> String {
        format!("<sips:callee@{}>", self.local)
    }

    fn on_request(&mut self, id: LinkId, m: &SipMessage) {
        let (Some(method), Some((cseq, _))) = (m.method().cloned(), m.cseq()) else {
            return;
        };
        if method == Method::Invite && self.call.is_none() {
            self.on_invite(id, m);
            return;
        }
        let known = self
            .call
            .as_ref()
            .is_some_and(|c| m.call_id() == Some(c.dialog.call_id.as_str()));
        let previous = self.call.as_ref().map_or(0, |c| c.remote_cseq);
        let reply = match (&method, known) {
            // A keep-alive probe from a gateway (in or out of the dialog).
            (Method::Options, _) => Some(response_to(m, 200, "OK", None)),
            (_, false) => Some(response_to(m, 481, "Call/Transaction Does Not Exist", None)),
            (Method::Ack, true) => None,
            (Method::Invite, true) if cseq == 1 => None, // a retransmission of the INVITE
            (Method::Invite, true) => {
                self.follow_offer(m);
                Some(self.reinvite_ok(m))
            }
            (Method::Bye, true) => {
                self.ended = Some("bye_received".into());
                Some(response_to(m, 200, "OK", None))
            }
            (Method::Cancel, true) => Some(self.on_cancel(id, m)),
            (_, true) => Some(response_to(m, 501, "Not Implemented", None)),
        };
        if method != Method::Ack && method != Method::Cancel {
            if let Some(c) = self.call.as_mut() {
                c.remote_cseq = c.remote_cseq.max(cseq);
            }
        }
        (self.emit)(serde_json::json!({
            "event": "request", "t_ms": ms_since(self.start), "link": id.0,
            "method": method.as_str(), "cseq": cseq, "previous_cseq": previous,
            "answered": reply.as_ref().map(|r| r.status()),
        }));
        if let Some(r) = reply {
            self.send(Some(id), r);
        }
    }

    /// A re-offer's new key or address of the gateway's is used from now on.
    fn follow_offer(&mut self, m: &SipMessage) {
        let (Ok(agreed), Some(leg), Some(c)) = (
            sdes::choose_from_offer(m.body()),
            self.media.leg.as_mut(),
            self.call.as_mut(),
        ) else {
            return;
        };
        let key = zeroize::Zeroizing::new(sdes::inline(&agreed.remote_key));
        if c.rx_key != key || leg.remote() != agreed.remote {
            let ok = leg
                .rekey_rx((agreed.profile, &agreed.remote_key), agreed.remote)
                .is_ok();
            c.rx_key = key;
            (self.emit)(
                serde_json::json!({"event": "rekeyed", "t_ms": ms_since(self.start), "ok": ok, "media": agreed.remote.to_string()}),
            );
        }
    }

    fn reinvite_ok(&self, m: &SipMessage) -> SipMessage {
        let Some(c) = &self.call else {
            return response_to(m, 481, "Call/Transaction Does Not Exist", None);
        };
        let mut ok = response_to(m, 200, "OK", Some(&c.to_tag));
        ok.push_header("Contact", self.contact());
        ok.push_header("Content-Type", "application/sdp");
        ok.set_body(c.answer.clone());
        ok
    }

    fn on_cancel(&mut self, id: LinkId, m: &SipMessage) -> SipMessage {
        if let Some(c) = self.call.as_ref().filter(|c| !c.answered) {
            let terminated = response_to(&c.invite, 487, "Request Terminated", Some(&c.to_tag));
            self.send(Some(id), terminated);
            self.ring_at = None;
            self.ended = Some("cancelled".into());
        }
        response_to(m, 200, "OK", None)
    }

    fn on_invite(&mut self, id: LinkId, m: &SipMessage) {
        let to_tag = token();
        match self.accept_offer(m) {
            Ok((leg, answer)) => {
                let rx_key = sdes::choose_from_offer(m.body())
                    .map(|a| sdes::inline(&a.remote_key))
                    .unwrap_or_default();
                let dialog = Dialog {
                    call_id: m.call_id().unwrap_or_default().to_string(),
                    from: format!("{};tag={to_tag}", m.header("to").unwrap_or_default()),
                    to: m.header("from").unwrap_or_default().to_string(),
                    target: uri_of(m.header("contact").unwrap_or_default()).to_string(),
                    routes: m
                        .header_values("record-route")
                        .flat_map(sbc_sip::message::split_values)
                        .map(|v| v.trim().to_string())
                        .collect(),
                    via_host: self.local.to_string(),
                    cseq: 0,
                };
                self.media.leg = Some(leg);
                self.call = Some(Call {
                    dialog,
                    invite: m.clone(),
                    to_tag: to_tag.clone(),
                    answer,
                    answered: false,
                    remote_cseq: m.cseq().map_or(1, |(n, _)| n),
                    rx_key: zeroize::Zeroizing::new(rx_key),
                });
                let mut ringing = response_to(m, 180, "Ringing", Some(&to_tag));
                ringing.push_header("Contact", self.contact());
                self.send(Some(id), ringing);
                (self.emit)(
                    serde_json::json!({"event": "invite", "t_ms": ms_since(self.start), "link": id.0}),
                );
                if self.opts.ring.is_zero() {
                    self.answer();
                } else {
                    self.ring_at = Some(Instant::now() + self.opts.ring);
                }
            }
            Err(e) => {
                let r = response_to(m, 488, "Not Acceptable Here", Some(&to_tag));
                (self.emit)(
                    serde_json::json!({"event": "refused", "t_ms": ms_since(self.start), "error": e.to_string()}),
                );
                self.send(Some(id), r);
                self.ended = Some("refused".into());
            }
        }
    }

    fn accept_offer(&self, m: &SipMessage) -> Result<(Leg, Vec<u8>), ProbeError> {
        let agreed = sdes::choose_from_offer(m.body())?;
        let ours = LocalKey {
            tag: agreed.tag,
            profile: agreed.profile,
            key: sdes::random_key(agreed.profile),
        };
        let sock = std::net::UdpSocket::bind(SocketAddr::new(self.opts.media_ip, 0))
            .map_err(|e| ProbeError::io("callee media socket", e))?;
        let port = sock
            .local_addr()
            .map_err(|e| ProbeError::io("callee media socket", e))?
            .port();
        sock.set_nonblocking(true)
            .map_err(|e| ProbeError::io("callee media socket", e))?;
        let sock = tokio::net::UdpSocket::from_std(sock)
            .map_err(|e| ProbeError::io("callee media socket", e))?;
        let answer = sdes::answer_sdp(self.opts.media_ip, port, &agreed, &ours, 1).into_bytes();
        let mut leg = Leg::new(
            sock,
            (ours.profile, &ours.key),
            (agreed.profile, &agreed.remote_key),
            agreed.remote,
            CALLEE_STREAM,
            Some(CALLER_STREAM),
        )?;
        if let Some(seq) = self.opts.first_seq {
            leg.set_next_seq(seq);
        }
        Ok((leg, answer))
    }

    /// Sends the 200 to the INVITE; media starts.
    fn answer(&mut self) {
        let Some(c) = self.call.as_mut() else {
            return;
        };
        c.answered = true;
        self.media.sending = true;
        let mut ok = response_to(&c.invite, 200, "OK", Some(&c.to_tag));
        ok.push_header("Contact", format!("<sips:callee@{}>", self.local));
        ok.push_header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
        ok.push_header("Content-Type", "application/sdp");
        ok.set_body(c.answer.clone());
        (self.emit)(serde_json::json!({"event": "answered", "t_ms": ms_since(self.start)}));
        self.send(None, ok);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Stop => self.ended = Some("stop".into()),
            Command::ReInvite => {
                (self.emit)(
                    serde_json::json!({"event": "ignored", "t_ms": ms_since(self.start), "command": "reinvite", "why": "the callee does not re-INVITE"}),
                );
            }
            Command::Bye => {
                let Some(c) = self.call.as_mut().filter(|c| c.answered) else {
                    (self.emit)(
                        serde_json::json!({"event": "ignored", "t_ms": ms_since(self.start), "command": "bye", "why": "no confirmed dialog"}),
                    );
                    return;
                };
                c.dialog.cseq += 1;
                let cseq = c.dialog.cseq;
                let bye = c.dialog.request(Method::Bye, cseq, &token());
                self.our_bye = Some(cseq);
                self.send(None, bye);
            }
        }
    }

    fn on_response(&mut self, m: &SipMessage) {
        let (Some((cseq, method)), Some(status)) = (m.cseq(), m.status()) else {
            return;
        };
        if method == Method::Bye && Some(cseq) == self.our_bye && status >= 200 {
            (self.emit)(serde_json::json!({
                "event": "response", "t_ms": ms_since(self.start), "method": "BYE",
                "cseq": cseq, "status": status,
            }));
            self.ended = Some("bye_answered".into());
        }
    }

    fn report(&mut self) {
        let v = self.media.report("callee", &self.ended);
        (self.emit)(v);
    }
}
