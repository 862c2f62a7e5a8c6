//! The demo answering endpoint (**demo only**): a SIP-over-TLS UAS the embedded default
//! runs behind its demo route, so a fresh clone can complete a call with nothing else
//! installed.
//!
//! It answers every INVITE with 180 then 200 and an SDES-SRTP answer (one of the offered
//! suites, a fresh key of its own), answers BYE, OPTIONS and re-INVITEs, and echoes media:
//! each SRTP packet it receives is decrypted with the offered key and sent back to its
//! source re-protected with its own key, its probe stamp updated with how many packets it
//! has received and which suite it used (see [`crate::rtp::Stamp`]), so `sbc-edge call`
//! can report each direction.
//!
//! Owns: its listener, its calls (bounded by [`MAX_CALLS`]) and their echo tasks. Must
//! not: be mistaken for a trunk (it does no authentication, no admission, no
//! retransmission of 2xx over TLS, and it answers everything), log keys, or keep a call
//! longer than [`MAX_CALL`] or past [`MEDIA_IDLE`] without packets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sbc_sip::message::{response_to, SipMessage};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use crate::conn::{token, SipConn};
use crate::media::{Got, Leg, ECHO};
use crate::rtp::{Stamp, STAMP_LEN};
use crate::sdes::{self, LocalKey};
use crate::ProbeError;

/// Calls the endpoint holds at once; more get 486. A demo sees one or a few.
pub const MAX_CALLS: usize = 64;

/// TLS connections the endpoint serves at once (a gateway pools one or a few).
pub const MAX_CONNECTIONS: usize = 32;

/// Longest a demo call lasts: the echo stops and the call is forgotten after this.
pub const MAX_CALL: Duration = Duration::from_secs(3600);

/// A call whose media stays silent this long is forgotten.
pub const MEDIA_IDLE: Duration = Duration::from_secs(60);

/// How long a TLS handshake from the gateway may take.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// How long a connection may stay silent: above a gateway's keep-alive interval.
const CONNECTION_IDLE: Duration = Duration::from_secs(900);

/// What the endpoint needs.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub tls: Arc<rustls::ServerConfig>,
    /// The address its SDP answers carry and its media sockets bind.
    pub media_ip: IpAddr,
}

/// One answered call: how to stop its echo, and the answer it gave (for re-INVITEs).
struct CallEntry {
    stop: Option<oneshot::Sender<()>>,
    answer: Vec<u8>,
    to_tag: String,
}

#[derive(Default)]
struct Calls {
    map: Mutex<HashMap<String, CallEntry>>,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallEntry>> {
        // A poisoned map only means an echo task panicked; the map itself is consistent.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running endpoint.
#[derive(Debug)]
pub struct EndpointHandle {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointHandle {
    /// Stops accepting; calls in progress end with their echo tasks' bounds.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

/// Serves on `listener` (already bound) until the handle is shut down.
pub fn serve(
    listener: std::net::TcpListener,
    cfg: EndpointConfig,
) -> Result<EndpointHandle, ProbeError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| ProbeError::io("demo endpoint listener", e))?;
    let listener =
        TcpListener::from_std(listener).map_err(|e| ProbeError::io("demo endpoint listener", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ProbeError::io("demo endpoint listener", e))?;
    tracing::info!(event = "demo_endpoint", %addr, "demo answering endpoint (demo only: answers every call and echoes its media) listening");
    let task = tokio::spawn(accept_loop(listener, cfg));
    Ok(EndpointHandle { addr, task })
}

async fn accept_loop(listener: TcpListener, cfg: EndpointConfig) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.tls.clone());
    let calls = Arc::new(Calls::default());
    let call_slots = Arc::new(Semaphore::new(MAX_CALLS));
    let conn_slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = conn_slots.clone().try_acquire_owned() else {
            tracing::warn!(event = "demo_endpoint_busy", %peer, "demo endpoint: too many connections, closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, calls, call_slots, media_ip) = (
            acceptor.clone(),
            calls.clone(),
            call_slots.clone(),
            cfg.media_ip,
        );
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_WAIT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::warn!(event = "demo_endpoint_tls", %peer, error = %e, "demo endpoint: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let local = tls.get_ref().0.local_addr().ok();
            let mut conn = SipConn::new(tls);
            loop {
                let m = match conn
                    .recv(Instant::now() + CONNECTION_IDLE, "a request")
                    .await
                {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => return,
                };
                if !m.is_request() {
                    continue;
                }
                let replies = handle(&m, &calls, &call_slots, media_ip, local).await;
                for r in replies {
                    if conn.send(&r).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn contact(local: Option<SocketAddr>) -> String {
    match local {
        Some(a) => format!("<sips:demo@{a}>"),
        None => "<sips:demo@localhost>".to_string(),
    }
}

/// The responses to one request.
async fn handle(
    req: &SipMessage,
    calls: &Arc<Calls>,
    slots: &Arc<Semaphore>,
    media_ip: IpAddr,
    local: Option<SocketAddr>,
) -> Vec<SipMessage> {
    let Some(method) = req.method().map(|m| m.as_str().to_string()) else {
        return Vec::new();
    };
    let call_id = req.call_id().unwrap_or_default().to_string();
    let reply = |code: u16, reason: &str, tag: Option<&str>| response_to(req, code, reason, tag);
    match method.as_str() {
        "INVITE" => {
            let known = calls
                .lock()
                .get(&call_id)
                .map(|c| (c.answer.clone(), c.to_tag.clone()));
            if let Some((answer, tag)) = known {
                // A re-INVITE (hold, refresh): the same answer again.
                let mut ok = reply(200, "OK", Some(&tag));
                ok.push_header("Contact", contact(local));
                ok.push_header("Content-Type", "application/sdp");
                ok.set_body(answer);
                return vec![ok];
            }
            let to_tag = token();
            match answer_call(req, calls, slots, media_ip, &to_tag).await {
                Ok(answer) => {
                    let mut ringing = reply(180, "Ringing", Some(&to_tag));
                    ringing.push_header("Contact", contact(local));
                    let mut ok = reply(200, "OK", Some(&to_tag));
                    ok.push_header("Contact", contact(local));
                    ok.push_header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
                    ok.push_header("Content-Type", "application/sdp");
                    ok.set_body(answer);
                    vec![ringing, ok]
                }
                Err((code, why)) => {
                    tracing::info!(event = "demo_call_refused", status = code, reason = %why, "demo endpoint refused a call");
                    vec![reply(code, &why, Some(&to_tag))]
                }
            }
        }
        "ACK" => Vec::new(),
        "BYE" => {
            let entry = calls.lock().remove(&call_id);
            match entry {
                Some(mut c) => {
                    if let Some(stop) = c.stop.take() {
                        let _ = stop.send(());
                    }
                    vec![reply(200, "OK", None)]
                }
                None => vec![reply(481, "Call/Transaction Does Not Exist", None)],
            }
        }
        // Every INVITE is answered at once, so there is never one left to cancel.
        "CANCEL" => vec![reply(481, "Call/Transaction Does Not Exist", None)],
        "OPTIONS" => {
            let mut ok = reply(200, "OK", Some(&token()));
            ok.push_header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
            vec![ok]
        }
        _ => vec![reply(501, "Not Implemented", Some(&token()))],
    }
}

/// Binds media, starts the echo and records the call; the SDP answer, or the status and
/// reason to refuse with.
async fn answer_call(
    req: &SipMessage,
    calls: &Arc<Calls>,
    slots: &Arc<Semaphore>,
    media_ip: IpAddr,
    to_tag: &str,
) -> Result<Vec<u8>, (u16, String)> {
    let permit = slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| (486, "Busy Here".to_string()))?;
    let agreed = sdes::choose_from_offer(req.body())
        .map_err(|e| (488, format!("Not Acceptable Here ({e})")))?;
    let ours = LocalKey {
        tag: agreed.tag,
        profile: agreed.profile,
        key: sdes::random_key(agreed.profile),
    };
    let sock = Leg::bind(SocketAddr::new(media_ip, 0))
        .await
        .map_err(|e| (500, format!("Server Internal Error ({e})")))?;
    let port = sock
        .local_addr()
        .map_err(|e| (500, format!("Server Internal Error ({e})")))?
        .port();
    let leg = Leg::new(
        sock,
        (ours.profile, &ours.key),
        (agreed.profile, &agreed.remote_key),
        agreed.remote,
        0,
        None,
    )
    .map_err(|e| (500, format!("Server Internal Error ({e})")))?;
    let answer =
        sdes::answer_sdp(media_ip, port, &agreed, &ours, rand::random::<u32>().into()).into_bytes();
    let (stop_tx, stop_rx) = oneshot::channel();
    let call_id = req.call_id().unwrap_or_default().to_string();
    calls.lock().insert(
        call_id.clone(),
        CallEntry {
            stop: Some(stop_tx),
            answer: answer.clone(),
            to_tag: to_tag.to_string(),
        },
    );
    tracing::info!(event = "demo_call_answered", suite = agreed.profile.as_str(), media = %agreed.remote, "demo endpoint answered a call; echoing its media");
    let calls = calls.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let stats = echo(leg, stop_rx).await;
        calls.lock().remove(&call_id);
        tracing::info!(
            event = "demo_call_ended",
            received = stats.received,
            echoed = stats.sent,
            refused = stats.refused,
            "demo endpoint call ended"
        );
    });
    Ok(answer)
}

/// Echoes every authenticated packet back to its source until stopped, silent for
/// [`MEDIA_IDLE`], or [`MAX_CALL`] has passed.
async fn echo(mut leg: Leg, mut stop: oneshot::Receiver<()>) -> crate::media::LegStats {
    let end = Instant::now() + MAX_CALL;
    let profile = leg.recv_profile();
    loop {
        let deadline = (Instant::now() + MEDIA_IDLE).min(end);
        let got = tokio::select! {
            _ = &mut stop => break,
            got = leg.recv(deadline) => got,
        };
        let (from, stamp) = match got {
            Ok(Some(Got::Probe { from, stamp })) => (from, Some(stamp)),
            Ok(Some(Got::Foreign { from })) => (from, None),
            Ok(Some(Got::Refused)) => continue,
            Ok(None) | Err(_) => break,
        };
        let mut payload = leg.last_payload().to_vec();
        if let Some(s) = stamp {
            if payload.len() >= STAMP_LEN {
                Stamp {
                    stream: s.stream | ECHO,
                    seq: s.seq,
                    echo_count: leg.stats.received,
                    suite: Some(profile),
                }
                .write(&mut payload);
            }
        }
        if leg.send_payload(&payload, from).await.is_err() {
            break;
        }
    }
    leg.stats
}
