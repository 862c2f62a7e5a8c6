//! One SIP connection of a failover peer, run by its own task: framed messages in (to the
//! peer's event channel), messages out (from a bounded queue), CRLF keep-alive pings out
//! and pongs to the far side's pings (RFC 5626 §3.5.1), and one `Closed` event when the
//! connection ends (EOF, reset, write error) so the peer can reconnect.
//!
//! Must not: hold dialog state (the peer does), or outlive its connection.

use std::time::Duration;

use sbc_sip::framing::{Frame, Framer};
use sbc_sip::message::SipMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::conn::MAX_MESSAGE;

/// Messages waiting to be written on one connection.
const OUT_QUEUE: usize = 32;

/// A connection's number within its peer (1, 2, ... in the order they were made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(pub u64);

/// What a connection task tells its peer.
#[derive(Debug)]
pub enum LinkEvent {
    /// A connection accepted (and its TLS handshake done) by a listening peer.
    Opened(LinkHandle),
    /// A framed message came in.
    Message(LinkId, SipMessage),
    /// The connection ended; why, in words.
    Closed(LinkId, String),
}

/// Writes to one connection.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    pub id: LinkId,
    tx: mpsc::Sender<SipMessage>,
}

impl LinkHandle {
    /// Queues `m`; false when the connection is gone or its queue is full.
    pub fn send(&self, m: SipMessage) -> bool {
        self.tx.try_send(m).is_ok()
    }

    /// The connection task is still running.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// Runs `io` on a new task; pings every `keepalive` when given.
pub fn spawn_link<S>(
    id: LinkId,
    io: S,
    keepalive: Option<Duration>,
    events: mpsc::Sender<LinkEvent>,
) -> LinkHandle
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    tokio::spawn(async move {
        let why = run(id, io, keepalive, rx, &events).await;
        let _ = events.send(LinkEvent::Closed(id, why)).await;
    });
    LinkHandle { id, tx }
}

async fn run<S>(
    id: LinkId,
    io: S,
    keepalive: Option<Duration>,
    mut out: mpsc::Receiver<SipMessage>,
    events: &mpsc::Sender<LinkEvent>,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(io);
    let mut framer = Framer::new(MAX_MESSAGE);
    // Without keep-alives the tick never fires within the peer's lifetime.
    let period = keepalive.unwrap_or(super::MAX_RUN * 2);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => {
                let n = match n {
                    Ok(0) => return "closed by the far side".into(),
                    Ok(n) => n,
                    Err(e) => return format!("read: {e}"),
                };
                framer.push(&buf[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message(b))) => match SipMessage::parse(&b) {
                            Ok(m) => {
                                if events.send(LinkEvent::Message(id, m)).await.is_err() {
                                    return "peer stopped".into();
                                }
                            }
                            Err(e) => return format!("bad SIP: {e:?}"),
                        },
                        Ok(Some(Frame::KeepAlivePing)) => {
                            if let Err(e) = w.write_all(b"\r\n").await {
                                return format!("write: {e}");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return format!("framing: {e:?}"),
                    }
                }
            }
            m = out.recv() => {
                let Some(m) = m else { return "peer stopped".into() };
                if let Err(e) = write(&mut w, &m.to_bytes()).await {
                    return format!("write: {e}");
                }
            }
            _ = tick.tick() => {
                if let Err(e) = write(&mut w, b"\r\n\r\n").await {
                    return format!("keep-alive write: {e}");
                }
            }
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
