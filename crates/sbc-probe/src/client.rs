//! The call client behind `sbc-edge call`: one SRTP call through a gateway over TLS.
//!
//! INVITE with an SDES-SRTP offer → 200 → ACK → media both ways for a bounded time (a
//! 20 ms stream from here; the far end, the demo answering endpoint, echoes it) → BYE.
//! The report gives the setup time (INVITE sent to 200 received), packets each way, loss
//! and the negotiated suites. Owns: the client's dialog (one call, so no transaction
//! layer: TLS is reliable and nothing is retransmitted) and its media leg. Must not: log
//! keys, or wait without a bound (each step has one, named below).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sbc_media::srtp::SrtpProfile;
use sbc_sip::message::{Method, SipMessage};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{token, uri_of, SipConn};
use crate::media::{Leg, LegStats, ECHO};
use crate::sdes;
use crate::ProbeError;

/// TCP connect plus TLS handshake to the gateway.
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// INVITE to final response: RFC 3261's Timer B (64 × T1 = 32 s), the longest a UAC's
/// INVITE transaction lasts.
pub const ANSWER_WAIT: Duration = Duration::from_secs(32);

/// BYE to its response: Timer F (64 × T1).
pub const BYE_WAIT: Duration = Duration::from_secs(32);

/// After the last packet is sent, how long echoes are still awaited (a loopback round
/// trip is well under a millisecond; a WAN one under 300 ms).
pub const ECHO_GRACE: Duration = Duration::from_millis(500);

/// Longest media phase accepted, so a typo cannot hold a call for days.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// The packet interval: 20 ms (see [`crate::rtp::PAYLOAD_LEN`]).
pub const PACKET_INTERVAL: Duration = Duration::from_millis(20);

/// The stream id of the caller's packets.
const CALLER_STREAM: u8 = 1;

/// What to call and how.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The gateway's SIPS listener.
    pub gateway: SocketAddr,
    /// The name its certificate is verified against (and sent as SNI).
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// The Request-URI user part (routes match its prefix).
    pub called: String,
    /// How long media flows.
    pub duration: Duration,
    /// Suites offered, in order of preference.
    pub suites: Vec<SrtpProfile>,
}

/// One direction's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    pub sent: u32,
    pub received: u32,
}

impl Direction {
    /// Lost packets as a fraction of those sent (0 when none were sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        f64::from(self.sent.saturating_sub(self.received)) / f64::from(self.sent)
    }

    /// `Err` naming the direction when its loss is above `max_loss` (a fraction).
    pub fn within(&self, name: &str, max_loss: f64) -> Result<(), String> {
        if self.loss() > max_loss {
            return Err(format!(
                "{name}: loss {:.1}% is above {:.1}%",
                100.0 * self.loss(),
                100.0 * max_loss
            ));
        }
        Ok(())
    }

    /// `{"sent", "received", "loss"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"sent": self.sent, "received": self.received, "loss": self.loss()})
    }
}

/// What a call did.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub gateway: SocketAddr,
    pub called: String,
    /// INVITE sent to 200 received.
    pub setup: Duration,
    /// A 180 came before the 200.
    pub ringing: bool,
    /// The suite on our leg (the gateway's answer).
    pub caller_suite: SrtpProfile,
    /// The suite on the far leg, as the echoing endpoint reported it.
    pub callee_suite: Option<SrtpProfile>,
    /// Caller → callee: our packets, and how many the echoing side said it received.
    pub to_callee: Direction,
    /// Callee → caller: the echoes sent (one per packet received) and those we received.
    pub to_caller: Direction,
    /// Packets that did not authenticate.
    pub refused: u32,
    pub media_secs: f64,
    /// The far side hung up first (its BYE came before ours).
    pub far_end_hung_up: bool,
}

impl CallReport {
    /// `Err` with the reason when the call does not count as good: no media either way,
    /// or loss in a direction above `max_loss` (a fraction).
    pub fn verdict(&self, max_loss: f64) -> Result<(), String> {
        if self.to_caller.received == 0 {
            return Err(
                "no media came back (is the far end an echoing endpoint, such as the demo's?)"
                    .into(),
            );
        }
        for (name, d) in [
            ("caller -> callee", self.to_callee),
            ("callee -> caller", self.to_caller),
        ] {
            d.within(name, max_loss)?;
        }
        Ok(())
    }

    /// The report as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let dir = |d: Direction| d.to_json();
        serde_json::json!({
            "gateway": self.gateway.to_string(),
            "called": self.called,
            "setup_ms": self.setup.as_secs_f64() * 1000.0,
            "ringing": self.ringing,
            "caller_suite": self.caller_suite.as_str(),
            "callee_suite": self.callee_suite.map(|s| s.as_str()),
            "caller_to_callee": dir(self.to_callee),
            "callee_to_caller": dir(self.to_caller),
            "refused": self.refused,
            "media_secs": self.media_secs,
            "far_end_hung_up": self.far_end_hung_up,
        })
    }
}

impl fmt::Display for CallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = |d: Direction| {
            format!(
                "sent {:>5}, received {:>5}, loss {:.1}%",
                d.sent,
                d.received,
                100.0 * d.loss()
            )
        };
        writeln!(
            f,
            "call {} via sips:{}: answered in {:.1} ms (INVITE to 200{})",
            self.called,
            self.gateway,
            self.setup.as_secs_f64() * 1000.0,
            if self.ringing { ", 180 first" } else { "" }
        )?;
        writeln!(
            f,
            "  suite, caller leg:  {} (the gateway's answer)",
            self.caller_suite.as_str()
        )?;
        match self.callee_suite {
            Some(s) => writeln!(
                f,
                "  suite, callee leg:  {} (reported by the far end)",
                s.as_str()
            )?,
            None => writeln!(
                f,
                "  suite, callee leg:  not reported (the far end is not an echoing probe)"
            )?,
        }
        writeln!(f, "  media {:.1} s of 20 ms packets:", self.media_secs)?;
        writeln!(f, "    caller -> callee: {}", dir(self.to_callee))?;
        write!(f, "    callee -> caller: {}", dir(self.to_caller))?;
        if self.refused > 0 {
            write!(f, "\n  {} packets did not authenticate", self.refused)?;
        }
        if self.far_end_hung_up {
            write!(f, "\n  the far end hung up first")?;
        }
        Ok(())
    }
}

/// One side's view of a dialog (RFC 3261 §12): what its in-dialog requests carry.
pub(crate) struct Dialog {
    pub(crate) call_id: String,
    /// Our From (name-addr with our tag).
    pub(crate) from: String,
    /// Their To (with their tag once known).
    pub(crate) to: String,
    /// The remote target (their Contact).
    pub(crate) target: String,
    pub(crate) routes: Vec<String>,
    pub(crate) via_host: String,
    pub(crate) cseq: u32,
}

impl Dialog {
    /// An in-dialog request (no Contact, no body).
    pub(crate) fn request(&self, method: Method, cseq: u32, branch: &str) -> SipMessage {
        let name = method.as_str().to_string();
        let mut m = SipMessage::new_request(method, self.target.clone());
        m.push_header(
            "Via",
            format!("SIP/2.0/TLS {};branch=z9hG4bK{branch}", self.via_host),
        );
        for r in &self.routes {
            m.push_header("Route", r.clone());
        }
        m.push_header("Max-Forwards", "70");
        m.push_header("From", self.from.clone());
        m.push_header("To", self.to.clone());
        m.push_header("Call-ID", self.call_id.clone());
        m.push_header("CSeq", format!("{cseq} {name}"));
        m
    }
}

/// Places one call and reports on it. A call refused or never answered is an error.
pub async fn place_call(opts: &CallOptions) -> Result<CallReport, ProbeError> {
    if opts.duration > MAX_DURATION {
        return Err(ProbeError::BadInput(format!(
            "duration above {} s",
            MAX_DURATION.as_secs()
        )));
    }
    if opts.suites.is_empty() {
        return Err(ProbeError::BadInput("offer at least one suite".into()));
    }
    let name = ServerName::try_from(opts.server_name.clone()).map_err(|_| {
        ProbeError::BadInput(format!("{:?} is not a server name", opts.server_name))
    })?;
    let connect = async {
        let tcp = TcpStream::connect(opts.gateway)
            .await
            .map_err(|e| ProbeError::io(format!("connect to {}", opts.gateway), e))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|e| ProbeError::io("local address", e))?;
        let tls = tokio_rustls::TlsConnector::from(opts.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ProbeError::Tls(format!("handshake with {}: {e}", opts.gateway)))?;
        Ok::<_, ProbeError>((tls, local))
    };
    let (tls, local) = tokio::time::timeout(CONNECT_WAIT, connect)
        .await
        .map_err(|_| ProbeError::Timeout {
            what: "TLS connection to the gateway",
            after: CONNECT_WAIT,
        })??;
    let mut conn = SipConn::new(tls);

    let sock = Leg::bind(SocketAddr::new(local.ip(), 0)).await?;
    let media_port = sock
        .local_addr()
        .map_err(|e| ProbeError::io("media socket", e))?
        .port();
    let keys = sdes::offer_keys(&opts.suites);
    let offer = sdes::offer_sdp(local.ip(), media_port, &keys, rand::random::<u32>().into());

    let host = opts.gateway.to_string();
    let mut dialog = Dialog {
        call_id: format!("{}@sbc-edge-call", token()),
        from: format!(
            "\"sbc-edge call\" <sips:probe@{}>;tag={}",
            local.ip(),
            token()
        ),
        to: format!("<sips:{}@{host}>", opts.called),
        target: format!("sips:{}@{host}", opts.called),
        routes: Vec::new(),
        via_host: local.to_string(),
        cseq: 1,
    };
    let branch = token();
    let mut invite = dialog.request(Method::Invite, 1, &branch);
    invite.push_header("Contact", format!("<sips:probe@{local}>"));
    invite.push_header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
    invite.push_header(
        "User-Agent",
        concat!("sbc-edge-call/", env!("CARGO_PKG_VERSION")),
    );
    invite.push_header("Content-Type", "application/sdp");
    invite.set_body(offer.into_bytes());

    let sent_at = Instant::now();
    conn.send(&invite).await?;
    let deadline = sent_at + ANSWER_WAIT;
    let mut ringing = false;
    let ok = loop {
        let Some(m) = conn.recv(deadline, "the answer to the INVITE").await? else {
            return Err(ProbeError::Timeout {
                what: "a final answer to the INVITE",
                after: ANSWER_WAIT,
            });
        };
        if m.is_request() || m.call_id() != Some(dialog.call_id.as_str()) {
            continue;
        }
        match m.status().unwrap_or(0) {
            180 | 183 => ringing = true,
            100..=199 => {}
            200..=299 => break m,
            code => {
                // RFC 3261 §17.1.1.3: the ACK of a non-2xx final response, same branch.
                if let Some(to) = m.header("to") {
                    dialog.to = to.to_string();
                }
                let ack = dialog.request(Method::Ack, 1, &branch);
                let _ = conn.send(&ack).await;
                return Err(ProbeError::Refused {
                    status: code,
                    reason: m.reason().unwrap_or_default().to_string(),
                });
            }
        }
    };
    let setup = sent_at.elapsed();
    if let Some(to) = ok.header("to") {
        dialog.to = to.to_string();
    }
    if let Some(c) = ok.header("contact") {
        dialog.target = uri_of(c).to_string();
    }
    // RFC 3261 §12.1.2: the UAC's route set is the Record-Route in reverse order.
    let mut routes: Vec<String> = ok
        .header_values("record-route")
        .flat_map(sbc_sip::message::split_values)
        .map(|v| v.trim().to_string())
        .collect();
    routes.reverse();
    dialog.routes = routes;
    let ack = dialog.request(Method::Ack, 1, &token());
    conn.send(&ack).await?;
    let answer = sdes::read_answer(ok.body(), &keys);
    let (agreed, ours) = match answer {
        Ok(v) => v,
        Err(e) => {
            let _ = hang_up(&mut conn, &mut dialog).await;
            return Err(e);
        }
    };

    let mut leg = Leg::new(
        sock,
        (ours.profile, &ours.key),
        (agreed.profile, &agreed.remote_key),
        agreed.remote,
        CALLER_STREAM,
        Some(CALLER_STREAM | ECHO),
    )?;
    let media_start = Instant::now();
    let stats = exchange(&mut leg, opts.duration).await?;
    let media_secs = media_start.elapsed().as_secs_f64();
    let far_end_hung_up = hang_up(&mut conn, &mut dialog).await?;
    Ok(CallReport {
        gateway: opts.gateway,
        called: opts.called.clone(),
        setup,
        ringing,
        caller_suite: agreed.profile,
        callee_suite: stats.echo_suite,
        to_callee: Direction {
            sent: stats.sent,
            received: stats.echo_count,
        },
        to_caller: Direction {
            sent: stats.echo_count,
            received: stats.received,
        },
        refused: stats.refused,
        media_secs,
        far_end_hung_up,
    })
}

/// Number of packets in `duration` at 20 ms, at least one.
pub fn packet_count(duration: Duration) -> u32 {
    let n = duration.as_millis() / PACKET_INTERVAL.as_millis();
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// Sends a 20 ms stream for `duration` and receives the echoes, then waits
/// [`ECHO_GRACE`] for the last ones.
async fn exchange(leg: &mut Leg, duration: Duration) -> Result<LegStats, ProbeError> {
    let total = packet_count(duration);
    let mut tick = tokio::time::interval(PACKET_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let never = Instant::now() + MAX_DURATION + ECHO_GRACE;
    while leg.stats.sent < total {
        tokio::select! {
            _ = tick.tick() => leg.send_next().await?,
            got = leg.recv(never) => { got?; }
        }
    }
    let grace = Instant::now() + ECHO_GRACE;
    while leg.recv(grace).await?.is_some() {
        if leg.stats.received >= total {
            break;
        }
    }
    Ok(leg.stats)
}

/// Sends BYE and waits for its 200; answers a BYE from the far side instead when one
/// comes first. True when the far side hung up first.
async fn hang_up<S>(conn: &mut SipConn<S>, dialog: &mut Dialog) -> Result<bool, ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    dialog.cseq += 1;
    let bye = dialog.request(Method::Bye, dialog.cseq, &token());
    conn.send(&bye).await?;
    let deadline = Instant::now() + BYE_WAIT;
    let mut far_end = false;
    loop {
        let Some(m) = conn.recv(deadline, "the answer to the BYE").await? else {
            return Err(ProbeError::Timeout {
                what: "the answer to the BYE",
                after: BYE_WAIT,
            });
        };
        if m.is_request() {
            if m.method().is_some_and(|x| *x == Method::Bye) {
                far_end = true;
                let r = sbc_sip::message::response_to(&m, 200, "OK", None);
                conn.send(&r).await?;
            }
            continue;
        }
        let is_bye = m
            .cseq()
            .is_some_and(|(n, meth)| n == dialog.cseq && meth == Method::Bye);
        if is_bye && m.status().is_some_and(|s| s >= 200) {
            // 481 after the far side's own BYE is the expected end too.
            return Ok(far_end);
        }
    }
}
