//! The failover caller: a platform's SIPS trunk client holding one call through the
//! gateway's VIP, reconnecting when its connection is closed or reset (see the module
//! docs of [`super`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sbc_media::srtp::SrtpProfile;
use sbc_sip::message::{response_to, Method, SipMessage};
use tokio::net::{TcpStream, UdpSocket};
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

/// One TCP connect attempt. A SYN to a VIP nobody holds yet goes unanswered, so attempts
/// are short and repeated every [`RECONNECT_EVERY`] until the new owner answers.
pub const CONNECT_WAIT: Duration = Duration::from_millis(250);

/// Pause between reconnect attempts.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(50);

/// A TLS handshake with the gateway (loopback-class network: a few ms).
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(2);

/// Events queued from connection tasks.
const EVENT_QUEUE: usize = 64;

/// What to call and how.
#[derive(Debug, Clone)]
pub struct CallerOptions {
    /// The gateway's SIPS listener (the VIP).
    pub gateway: SocketAddr,
    pub server_name: String,
    /// Trusts the gateway's CA and presents the tenant's client certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// The Request-URI user part.
    pub called: String,
    /// The one suite offered.
    pub suite: SrtpProfile,
    /// Where the media socket binds (and what the offer says).
    pub media_ip: IpAddr,
    /// The caller stops (and reports) after this, at most [`MAX_RUN`].
    pub max_run: Duration,
    /// CRLF ping interval ([`super::KEEPALIVE`]).
    pub keepalive: Duration,
    /// The first RTP sequence number sent (random when `None`).
    pub first_seq: Option<u16>,
}

struct Pending {
    cseq: u32,
    method: Method,
    sent: Instant,
}

struct Caller<'a> {
    opts: CallerOptions,
    start: Instant,
    emit: Emit<'a>,
    events_tx: mpsc::Sender<LinkEvent>,
    link: Option<LinkHandle>,
    links: u64,
    disconnected_at: Option<Instant>,
    outbox: Vec<SipMessage>,
    dialog: Dialog,
    keys: Vec<LocalKey>,
    offer: String,
    media_port: u16,
    sock: Option<UdpSocket>,
    media: MediaSide,
    confirmed: bool,
    rang: bool,
    pending: Vec<Pending>,
    ended: Option<String>,
    connecting: bool,
    deadline: Instant,
    /// The gateway's current key (its inline form), to notice a re-key.
    rx_key: Option<zeroize::Zeroizing<String>>,
}

/// Runs the caller until its call ends, a `stop` command, or `max_run`; then emits a
/// `report` line. An error only when the first connection or the media socket fails.
pub async fn run(
    opts: CallerOptions,
    mut commands: mpsc::Receiver<Command>,
    emit: Emit<'_>,
) -> Result<(), ProbeError> {
    let start = Instant::now();
    let deadline = start + opts.max_run.min(MAX_RUN);
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let sock = Leg::bind(SocketAddr::new(opts.media_ip, 0)).await?;
    let media_port = sock
        .local_addr()
        .map_err(|e| ProbeError::io("media socket", e))?
        .port();
    let keys = sdes::offer_keys(&[opts.suite]);
    let offer = sdes::offer_sdp(
        opts.media_ip,
        media_port,
        &keys,
        rand::random::<u32>().into(),
    );
    let host = opts.gateway.to_string();
    let dialog = Dialog {
        call_id: format!("{}@failover-caller", token()),
        from: format!("<sips:caller@{}>;tag={}", opts.media_ip, token()),
        to: format!("<sips:{}@{host}>", opts.called),
        target: format!("sips:{}@{host}", opts.called),
        routes: Vec::new(),
        via_host: opts.media_ip.to_string(),
        cseq: 1,
    };
    let mut c = Caller {
        opts,
        start,
        emit,
        events_tx,
        link: None,
        links: 0,
        disconnected_at: None,
        outbox: Vec::new(),
        dialog,
        keys,
        offer,
        media_port,
        sock: Some(sock),
        media: MediaSide::new(start),
        confirmed: false,
        rang: false,
        pending: Vec::new(),
        ended: None,
        connecting: false,
        deadline,
        rx_key: None,
    };
    c.connect(deadline);
    c.send_invite();
    c.run_loop(Inputs::new(&mut events, &mut commands, deadline))
        .await;
    c.media.end().await;
    c.report();
    Ok(())
}

impl Caller<'_> {
    async fn run_loop(&mut self, mut inputs: Inputs<'_>) {
        let far = inputs.deadline + Duration::from_secs(1);
        while self.ended.is_none() {
            let media = &mut self.media;
            tokio::select! {
                input = inputs.next() => match input {
                    Input::Event(ev) => self.on_event(ev),
                    Input::Command(cmd) => self.on_command(cmd),
                    Input::Deadline => self.ended = Some("max_run".into()),
                    Input::EventsClosed => self.ended = Some("events closed".into()),
                },
                _ = media.step(far) => {}
            }
        }
    }

    /// Starts connecting in the background (media keeps flowing meanwhile); the link
    /// arrives as [`LinkEvent::Opened`].
    fn connect(&mut self, until: Instant) {
        if self.connecting {
            return;
        }
        self.connecting = true;
        self.links += 1;
        let id = LinkId(self.links);
        let (opts, events) = (self.opts.clone(), self.events_tx.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                if let Some(tls) = attempt(&opts).await {
                    let link = spawn_link(id, tls, Some(opts.keepalive), events.clone());
                    let _ = events.send(LinkEvent::Opened(link)).await;
                    return;
                }
                tokio::time::sleep(RECONNECT_EVERY).await;
            }
        });
    }

    fn on_opened(&mut self, link: LinkHandle) {
        self.connecting = false;
        let down_ms = self
            .disconnected_at
            .take()
            .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        (self.emit)(serde_json::json!({
            "event": "connected", "t_ms": ms_since(self.start), "link": link.id.0,
            "down_ms": down_ms,
        }));
        for m in std::mem::take(&mut self.outbox) {
            link.send(m);
        }
        self.link = Some(link);
    }

    fn send(&mut self, m: SipMessage) {
        if let Some(l) = self.link.as_ref().filter(|l| l.is_open()) {
            if l.send(m.clone()) {
                return;
            }
        }
        if self.outbox.len() < MAX_QUEUED {
            self.outbox.push(m);
        }
    }

    fn contact(&self) -> String {
        format!("<sips:caller@{}>", self.dialog.via_host)
    }

    fn send_invite(&mut self) {
        let mut invite = self.dialog.request(Method::Invite, 1, &token());
        invite.push_header("Contact", self.contact());
        invite.push_header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
        invite.push_header("Content-Type", "application/sdp");
        invite.set_body(self.offer.clone().into_bytes());
        self.pending.push(Pending {
            cseq: 1,
            method: Method::Invite,
            sent: Instant::now(),
        });
        self.send(invite);
    }

    fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Opened(link) => self.on_opened(link),
            LinkEvent::Message(_, m) if m.is_request() => self.on_request(&m),
            LinkEvent::Message(_, m) => self.on_response(&m),
            LinkEvent::Closed(id, why) => {
                if self.link.as_ref().is_some_and(|l| l.id == id) {
                    self.link = None;
                    self.disconnected_at = Some(Instant::now());
                    self.connect(self.deadline);
                    (self.emit)(serde_json::json!({
                        "event": "disconnected", "t_ms": ms_since(self.start), "link": id.0,
                        "why": why,
                    }));
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let method = match cmd {
            Command::Stop => {
                self.ended = Some("stop".into());
                return;
            }
            Command::ReInvite => Method::Invite,
            Command::Bye => Method::Bye,
        };
        if !self.confirmed {
            (self.emit)(
                serde_json::json!({"event": "ignored", "t_ms": ms_since(self.start), "command": format!("{cmd:?}"), "why": "no confirmed dialog"}),
            );
            return;
        }
        self.dialog.cseq += 1;
        let cseq = self.dialog.cseq;
        let mut m = self.dialog.request(method.clone(), cseq, &token());
        if method == Method::Invite {
            m.push_header("Contact", self.contact());
            m.push_header("Content-Type", "application/sdp");
            m.set_body(self.offer.clone().into_bytes());
        }
        self.pending.push(Pending {
            cseq,
            method,
            sent: Instant::now(),
        });
        self.send(m);
    }

    fn on_request(&mut self, m: &SipMessage) {
        let Some(method) = m.method().cloned() else {
            return;
        };
        let cseq = m.cseq().map(|(n, _)| n);
        let reply = match method {
            Method::Ack => return,
            Method::Bye => {
                self.ended = Some("bye_received".into());
                response_to(m, 200, "OK", None)
            }
            Method::Invite => self.answer_reinvite(m),
            Method::Options => response_to(m, 200, "OK", None),
            _ => response_to(m, 501, "Not Implemented", None),
        };
        (self.emit)(serde_json::json!({
            "event": "request", "t_ms": ms_since(self.start), "method": method.as_str(),
            "cseq": cseq, "answered": reply.status(),
        }));
        self.send(reply);
    }

    /// A re-INVITE from the far side: answered with our key in the suite it offers.
    fn answer_reinvite(&self, m: &SipMessage) -> SipMessage {
        let ours = sdes::choose_from_offer(m.body()).ok().and_then(|a| {
            self.keys
                .iter()
                .find(|k| k.profile == a.profile)
                .map(|k| (a, k))
        });
        let Some((agreed, key)) = ours else {
            return response_to(m, 488, "Not Acceptable Here", None);
        };
        let body = sdes::answer_sdp(self.opts.media_ip, self.media_port, &agreed, key, 1);
        let mut ok = response_to(m, 200, "OK", None);
        ok.push_header("Contact", self.contact());
        ok.push_header("Content-Type", "application/sdp");
        ok.set_body(body.into_bytes());
        ok
    }

    fn on_response(&mut self, m: &SipMessage) {
        let (Some((cseq, method)), Some(status)) = (m.cseq(), m.status()) else {
            return;
        };
        if method == Method::Invite && cseq == 1 && self.confirmed && status < 300 {
            // A 2xx retransmission (a new owner resending it): ACK again.
            self.ack(1);
            return;
        }
        let Some(at) = self
            .pending
            .iter()
            .position(|p| p.cseq == cseq && p.method == method)
        else {
            return;
        };
        let ms = self.pending[at].sent.elapsed().as_secs_f64() * 1000.0;
        if status < 200 {
            if cseq == 1 && (status == 180 || status == 183) && !self.rang {
                self.rang = true;
                (self.emit)(
                    serde_json::json!({"event": "ringing", "t_ms": ms_since(self.start), "status": status}),
                );
            }
            return;
        }
        self.pending.remove(at);
        (self.emit)(serde_json::json!({
            "event": "response", "t_ms": ms_since(self.start), "method": method.as_str(),
            "cseq": cseq, "status": status, "ms": ms,
        }));
        match method {
            Method::Invite if cseq == 1 => self.on_initial_final(m, status),
            Method::Invite if status < 300 => {
                self.ack(cseq);
                self.follow_answer(m);
            }
            Method::Bye => self.ended = Some("bye_answered".into()),
            _ => {}
        }
    }

    fn on_initial_final(&mut self, m: &SipMessage, status: u16) {
        if let Some(to) = m.header("to") {
            self.dialog.to = to.to_string();
        }
        if status >= 300 {
            // RFC 3261 §17.1.1.3: the ACK of a non-2xx final response.
            self.ack(1);
            self.ended = Some(format!("refused {status}"));
            return;
        }
        if let Some(c) = m.header("contact") {
            self.dialog.target = uri_of(c).to_string();
        }
        let mut routes: Vec<String> = m
            .header_values("record-route")
            .flat_map(sbc_sip::message::split_values)
            .map(|v| v.trim().to_string())
            .collect();
        routes.reverse();
        self.dialog.routes = routes;
        self.ack(1);
        self.confirmed = true;
        let leg = sdes::read_answer(m.body(), &self.keys).and_then(|(agreed, ours)| {
            let sock = self.sock.take().ok_or(ProbeError::Closed("media socket"))?;
            Leg::new(
                sock,
                (ours.profile, &ours.key),
                (agreed.profile, &agreed.remote_key),
                agreed.remote,
                CALLER_STREAM,
                Some(CALLEE_STREAM),
            )
        });
        match leg {
            Ok(l) => {
                (self.emit)(
                    serde_json::json!({"event": "answered", "t_ms": ms_since(self.start), "media": l.remote().to_string()}),
                );
                self.media.leg = Some(l);
                self.media.sending = true;
            }
            Err(e) => {
                (self.emit)(
                    serde_json::json!({"event": "bad_answer", "t_ms": ms_since(self.start), "error": e.to_string()}),
                );
                self.ended = Some("bad answer".into());
            }
        }
    }

    /// A re-INVITE's answer: a new key or address of the gateway's is used from now on.
    fn follow_answer(&mut self, m: &SipMessage) {
        let Ok((agreed, _)) = sdes::read_answer(m.body(), &self.keys) else {
            return;
        };
        let key = zeroize::Zeroizing::new(sdes::inline(&agreed.remote_key));
        let Some(leg) = self.media.leg.as_mut() else {
            return;
        };
        if self.rx_key.as_ref() != Some(&key) || leg.remote() != agreed.remote {
            let ok = leg
                .rekey_rx((agreed.profile, &agreed.remote_key), agreed.remote)
                .is_ok();
            self.rx_key = Some(key);
            (self.emit)(
                serde_json::json!({"event": "rekeyed", "t_ms": ms_since(self.start), "ok": ok, "media": agreed.remote.to_string()}),
            );
        }
    }

    fn ack(&mut self, cseq: u32) {
        let ack = self.dialog.request(Method::Ack, cseq, &token());
        self.send(ack);
    }

    fn report(&mut self) {
        let mut v = self.media.report("caller", &self.ended);
        v["connections"] = self.links.into();
        v["suite"] = self.opts.suite.as_str().into();
        v["unanswered"] = self.pending.len().into();
        (self.emit)(v);
    }
}

/// One connect and handshake attempt, `None` when it failed or took too long.
async fn attempt(opts: &CallerOptions) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(opts.server_name.clone()).ok()?;
    let tcp = tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(opts.gateway))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(opts.tls.clone());
    tokio::time::timeout(HANDSHAKE_WAIT, connector.connect(name, tcp))
        .await
        .ok()?
        .ok()
}
