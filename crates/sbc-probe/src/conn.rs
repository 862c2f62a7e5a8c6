//! SIP over one reliable byte stream (TLS, usually) for the probes, on sbc-sip's framing
//! and messages.
//!
//! Owns: writing messages, reading framed messages with a deadline, answering keep-alive
//! pings (RFC 5626 §3.5.1). Must not: keep transaction state (the callers do, and over a
//! reliable transport they need no retransmissions), or wait without a deadline.

use std::time::Duration;

use rand::Rng;
use sbc_sip::framing::{Frame, Framer};
use sbc_sip::message::SipMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::ProbeError;

/// Largest SIP message a probe accepts: far above any INVITE with SDP a gateway sends,
/// small enough that a misbehaving peer cannot make a probe hold much memory.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A SIP connection.
#[derive(Debug)]
pub struct SipConn<S> {
    io: S,
    framer: Framer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SipConn<S> {
    pub fn new(io: S) -> SipConn<S> {
        SipConn {
            io,
            framer: Framer::new(MAX_MESSAGE),
        }
    }

    /// Writes `m`.
    pub async fn send(&mut self, m: &SipMessage) -> Result<(), ProbeError> {
        self.io
            .write_all(&m.to_bytes())
            .await
            .map_err(|e| ProbeError::io("SIP write", e))?;
        self.io
            .flush()
            .await
            .map_err(|e| ProbeError::io("SIP write", e))
    }

    /// The next message, `Ok(None)` at `deadline`. `what` names what is awaited in errors.
    pub async fn recv(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Option<SipMessage>, ProbeError> {
        loop {
            match self.framer.next_frame() {
                Ok(Some(Frame::Message(b))) => {
                    return SipMessage::parse(&b)
                        .map(Some)
                        .map_err(|e| ProbeError::Sip(format!("{e:?}")));
                }
                Ok(Some(Frame::KeepAlivePing)) => {
                    // RFC 5626 §3.5.1: a double CRLF ping is answered with one CRLF.
                    self.io
                        .write_all(b"\r\n")
                        .await
                        .map_err(|e| ProbeError::io("SIP write", e))?;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(ProbeError::Sip(format!("framing: {e:?}"))),
            }
            let mut buf = [0u8; 8192];
            let n = match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(ProbeError::Closed(what)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ProbeError::io("SIP read", e)),
            };
            self.framer.push(&buf[..n]);
        }
    }

    /// Like [`SipConn::recv`], but running out of time is an error.
    pub async fn expect(
        &mut self,
        wait: Duration,
        what: &'static str,
    ) -> Result<SipMessage, ProbeError> {
        self.recv(Instant::now() + wait, what)
            .await?
            .ok_or(ProbeError::Timeout { what, after: wait })
    }
}

/// A random token for tags, branches and Call-IDs (64 bits, hex).
pub fn token() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// The URI inside a name-addr (`"x" <sips:a@b>;tag=1` → `sips:a@b`), or the value itself.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_framed_messages_answers_pings_and_bounds_the_wait() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut conn = SipConn::new(a);
        b.write_all(b"\r\n\r\nOPTIONS sips:x SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sips:a@b>;tag=1\r\nTo: <sips:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            .await
            .expect("write");
        let m = conn
            .expect(Duration::from_secs(2), "OPTIONS")
            .await
            .expect("message");
        assert_eq!(m.call_id(), Some("c"));
        let mut pong = [0u8; 2];
        b.read_exact(&mut pong).await.expect("pong");
        assert_eq!(&pong, b"\r\n");
        let err = conn
            .expect(Duration::from_millis(50), "nothing")
            .await
            .expect_err("times out");
        assert!(matches!(
            err,
            ProbeError::Timeout {
                what: "nothing",
                ..
            }
        ));
        drop(b);
        let err = conn
            .expect(Duration::from_secs(2), "a BYE")
            .await
            .expect_err("closed");
        assert!(err.to_string().contains("closed"), "{err}");
    }

    #[test]
    fn uri_of_name_addrs() {
        assert_eq!(uri_of("\"A\" <sips:a@b:5061>;tag=1"), "sips:a@b:5061");
        assert_eq!(uri_of("sips:a@b;tag=1"), "sips:a@b");
    }
}
