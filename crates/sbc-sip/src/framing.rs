//! SIP message framing over a byte stream (RFC 3261 §18.3): a message ends where its
//! Content-Length says. Also recognises the RFC 5626 §4.4.1 CRLF keep-alive ping.
//!
//! Bounded: a message (head and body) larger than the configured maximum is an error, and
//! the connection should be closed: on a stream there is no way to resynchronise.

use bytes::{Buf, Bytes, BytesMut};

/// One item read off a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete message: head and body.
    Message(Bytes),
    /// A double-CRLF keep-alive ping; answer with a single CRLF (pong).
    KeepAlivePing,
}

/// A stream that cannot be framed any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("message larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("missing or malformed Content-Length")]
    BadContentLength,
}

/// Accumulates stream bytes and cuts them into frames.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max: usize,
    /// Bytes of `buf` already searched for the end of headers.
    scanned: usize,
    /// End of the current message's head, once found (waiting for its body).
    head_end: Option<usize>,
}

impl Framer {
    /// A framer accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: BytesMut::with_capacity(max.min(16 * 1024)),
            max,
            scanned: 0,
            head_end: None,
        }
    }

    /// Add bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that are not yet a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// True while part of a message is held: anything but (a prefix of) a CRLF keep-alive.
    /// A driver starts its message-completion deadline when this turns true.
    pub fn in_message(&self) -> bool {
        !(self.buf.len() <= 3 && b"\r\n\r\n".starts_with(&self.buf))
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        // Keep-alives and stray CRLFs between messages.
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                self.scanned = 0;
                return Ok(Some(Frame::KeepAlivePing));
            }
            if self.buf.starts_with(b"\r\n") && self.buf.len() > 2 && self.buf[2] != b'\r' {
                // A lone CRLF (a pong, or padding) before a message.
                self.buf.advance(2);
                self.scanned = 0;
                continue;
            }
            if self.buf.len() <= 3 && b"\r\n\r\n".starts_with(&self.buf) {
                return Ok(None);
            }
            break;
        }
        let from = self.scanned.saturating_sub(3);
        let found = match self.head_end {
            Some(end) => Some(end),
            None => memchr::memmem::find(&self.buf[from..], b"\r\n\r\n").map(|p| from + p + 4),
        };
        let Some(end) = found else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(FrameError::TooLarge { limit: self.max });
            }
            return Ok(None);
        };
        let body_len = content_length(&self.buf[..end])?;
        let total = end
            .checked_add(body_len)
            .ok_or(FrameError::BadContentLength)?;
        if total > self.max {
            return Err(FrameError::TooLarge { limit: self.max });
        }
        if self.buf.len() < total {
            self.head_end = Some(end);
            return Ok(None);
        }
        self.scanned = 0;
        self.head_end = None;
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

/// The Content-Length of a head (0 when absent: RFC 3261 §18.3 makes it mandatory on
/// streams, but an absent one can only mean an empty body here).
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = std::str::from_utf8(line[colon + 1..].trim_ascii())
            .map_err(|_| FrameError::BadContentLength)?;
        let n: usize = value.parse().map_err(|_| FrameError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadContentLength);
        }
        found = Some(n);
    }
    Ok(found.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn frames_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(MSG);
        for chunk in 1..stream.len() {
            let mut f = Framer::new(1024);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                f.push(piece);
                while let Some(frame) = f.next_frame().expect("frames") {
                    got.push(frame);
                }
            }
            assert_eq!(
                got,
                vec![
                    Frame::KeepAlivePing,
                    Frame::Message(Bytes::from_static(MSG)),
                    Frame::Message(Bytes::from_static(MSG)),
                ],
                "chunk size {chunk}"
            );
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn keep_alives_do_not_start_a_message() {
        let mut f = Framer::new(1024);
        assert!(!f.in_message());
        for piece in [&b"\r"[..], b"\n", b"\r", b"\n"] {
            f.push(piece);
            while f.next_frame().expect("frames").is_some() {}
            assert!(!f.in_message(), "a CRLF keep-alive is not a message");
        }
        f.push(b"O");
        assert_eq!(f.next_frame(), Ok(None));
        assert!(f.in_message(), "one byte of a request starts a message");
        f.push(&MSG[1..]);
        assert_eq!(
            f.next_frame(),
            Ok(Some(Frame::Message(Bytes::from_static(MSG))))
        );
        assert!(!f.in_message(), "the message is complete");
        f.push(b"\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        assert!(!f.in_message(), "a lone CRLF after a message is not one");
    }

    #[test]
    fn bounds_and_bad_lengths() {
        let mut f = Framer::new(64);
        f.push(&[b'a'; 65]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 64 }));

        let mut f = Framer::new(64);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 100\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 64 }));

        let mut f = Framer::new(1024);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::BadContentLength));

        let mut f = Framer::new(1024);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::BadContentLength));
    }
}
