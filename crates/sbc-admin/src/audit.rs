//! The audit log: one JSON line per admin request that reads call data or changes state,
//! hash-chained so an edit, a removal or an insertion shows.
//!
//! A line is a JSON object with, in this order: `time` (RFC 3339, UTC), `token` (the
//! token's configured id, never the token; `null` when no valid token was presented),
//! `role`, `token_tenant` (the token's tenant; `null` for operators), `tenant` and `call`
//! (what the request was about, when known), `method`, `path` (with query), `status` (the
//! HTTP status answered), `prev` and `sha256`. A WebSocket tap writes a second line when it
//! ends: method `WS-CLOSE`, the upgrade's path, and the WebSocket close code as `status`.
//! A SIPREC recording's life (sbc-core's `AuditSink`, fed by the SIP server off its core
//! loop) writes lines in the same order: `token`, `role` and `token_tenant` `null`,
//! `tenant` and `call` of the recorded call, method `SIPREC`, path
//! `recording/<event>?srs=<SRS URI>` (`<event>`: `started`, `stopped`, `stopped_by_srs`,
//! `paused`, `resumed`, `failed`), and as `status` the SIP status that decided it (an
//! SRS's refusal) or 0. The chain fields:
//!
//! - `prev`: hex SHA-256 of the whole previous line (its bytes without the newline); 64
//!   zeros on the first line.
//! - `sha256`: hex SHA-256 of this line's text up to, not including, `,"sha256":"`. With it,
//!   a changed byte is pinned to the line it is in (not only to the line after), the last
//!   line included.
//!
//! [`verify_audit`] checks both and names the first line that breaks. What a chain cannot
//! show on its own: someone rewriting every line from some point to the end (or cutting
//! lines off the end) with correct hashes. Ship lines off the host, or note the last
//! line's hash elsewhere, to anchor it.
//!
//! Writes are serialised by a mutex (held for one `write` of one line, never across an
//! `.await`). A failed write breaks the log for good: every later [`AuditLog::record`]
//! fails too, and the admin plane answers 500 rather than serve unaudited data.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest `path` written (a request's path and query), so a hostile URL cannot make
/// audit lines arbitrarily long.
pub const MAX_AUDIT_PATH: usize = 512;

const SELF_HASH_KEY: &str = ",\"sha256\":\"";

/// Why an audit file does not verify (or could not be opened).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AuditError {
    /// 1-based number of the first bad line; 0 when the file as a whole is at fault
    /// (cannot be read).
    pub line: usize,
    pub reason: String,
}

/// One audit record, before it is chained and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub time: SystemTime,
    pub token: Option<String>,
    pub role: Option<&'static str>,
    pub token_tenant: Option<String>,
    pub tenant: Option<String>,
    pub call: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    token: Option<&'a str>,
    role: Option<&'a str>,
    token_tenant: Option<&'a str>,
    tenant: Option<&'a str>,
    call: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    prev: &'a str,
}

struct Inner {
    sink: Box<dyn Write + Send>,
    /// Hex SHA-256 of the last line written (or [`GENESIS`]).
    prev: String,
    /// Set by a failed write; the chain's end is then unknown.
    broken: bool,
}

/// An append-only, hash-chained audit log. `Send + Sync`; share it as `Arc<AuditLog>`.
pub struct AuditLog {
    inner: Mutex<Inner>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Open (or create) an audit file for appending. An existing file is verified first and
    /// its chain continued; a file that does not verify is refused (move it aside: it is
    /// evidence), as is one whose last line is incomplete.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let whole = |reason: String| AuditError { line: 0, reason };
        let prev = match std::fs::read(path) {
            Ok(bytes) => verify_bytes(&bytes)?.1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => GENESIS.to_string(),
            Err(e) => return Err(whole(format!("cannot read {}: {e}", path.display()))),
        };
        let file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| whole(format!("cannot open {} for appending: {e}", path.display())))?;
        Ok(AuditLog {
            inner: Mutex::new(Inner {
                sink: Box::new(file),
                prev,
                broken: false,
            }),
        })
    }

    /// A new chain written to `sink` (stdout, a pipe, a test buffer).
    pub fn to_writer(sink: Box<dyn Write + Send>) -> AuditLog {
        AuditLog {
            inner: Mutex::new(Inner {
                sink,
                prev: GENESIS.to_string(),
                broken: false,
            }),
        }
    }

    /// Chain and write one record as one line. Fails if the write fails or an earlier one
    /// did.
    pub fn record(&self, entry: &AuditEntry) -> io::Result<()> {
        let time = sbc_core::time::rfc3339(entry.time);
        let path = truncate(&entry.path, MAX_AUDIT_PATH);
        // A poisoned lock means a panic while writing; treat the log as broken.
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                g.broken = true;
                g
            }
        };
        if inner.broken {
            return Err(io::Error::other(
                "audit log broken by an earlier write error",
            ));
        }
        let line = Line {
            time,
            token: entry.token.as_deref(),
            role: entry.role,
            token_tenant: entry.token_tenant.as_deref(),
            tenant: entry.tenant.as_deref(),
            call: entry.call.as_deref(),
            method: &entry.method,
            path,
            status: entry.status,
            prev: &inner.prev,
        };
        let mut text = serde_json::to_string(&line).map_err(io::Error::other)?;
        // serde_json writes an object as `{...}`: reopen it to append the self hash.
        if text.pop() != Some('}') {
            return Err(io::Error::other(
                "audit line did not serialise as an object",
            ));
        }
        let own = hex::encode(Sha256::digest(text.as_bytes()));
        text.push_str(SELF_HASH_KEY);
        text.push_str(&own);
        text.push_str("\"}");
        let next_prev = hex::encode(Sha256::digest(text.as_bytes()));
        text.push('\n');
        let written = inner
            .sink
            .write_all(text.as_bytes())
            .and_then(|()| inner.sink.flush());
        match written {
            Ok(()) => {
                inner.prev = next_prev;
                Ok(())
            }
            Err(e) => {
                inner.broken = true;
                Err(e)
            }
        }
    }
}

impl sbc_core::audit::AuditSink for AuditLog {
    fn recording(&self, ev: &sbc_core::audit::RecordingAudit) -> io::Result<()> {
        self.record(&AuditEntry {
            time: SystemTime::now(),
            token: None,
            role: None,
            token_tenant: None,
            tenant: Some(ev.tenant.to_string()),
            call: Some(ev.call.clone()),
            method: "SIPREC".into(),
            path: format!("recording/{}?srs={}", ev.event.as_str(), ev.srs),
            status: ev.status,
        })
    }

    fn cluster(&self, ev: &sbc_core::audit::ClusterAudit) -> io::Result<()> {
        self.record(&AuditEntry {
            time: SystemTime::now(),
            token: None,
            role: None,
            token_tenant: None,
            tenant: None,
            call: None,
            method: "CLUSTER".into(),
            path: format!(
                "cluster/{}?node={}&peer={}&calls={}&detail={}",
                ev.event.as_str(),
                ev.node,
                ev.peer,
                ev.calls,
                ev.detail
            ),
            status: 0,
        })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Check an audit file's chain; the number of lines on success, else the first bad line.
pub fn verify_audit(path: &Path) -> Result<usize, AuditError> {
    let bytes = std::fs::read(path).map_err(|e| AuditError {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    verify_bytes(&bytes).map(|(n, _)| n)
}

/// Check a chain held in memory: line count and the hex SHA-256 of the last line.
pub fn verify_bytes(bytes: &[u8]) -> Result<(usize, String), AuditError> {
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = count + 1;
        let bad = |reason: &str| AuditError {
            line: n,
            reason: reason.to_string(),
        };
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(bad("incomplete line (no newline at the end of the file)"));
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        check_line(line, &prev).map_err(|reason| bad(&reason))?;
        prev = hex::encode(Sha256::digest(line));
        count = n;
    }
    Ok((count, prev))
}

fn check_line(line: &[u8], prev: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON line: {e}"))?;
    let suffix_len = SELF_HASH_KEY.len() + 64 + 2;
    let own_at = line
        .len()
        .checked_sub(suffix_len)
        .filter(|&at| line[at..].starts_with(SELF_HASH_KEY.as_bytes()) && line.ends_with(b"\"}"))
        .ok_or("no trailing \"sha256\" field")?;
    let own = &line[own_at + SELF_HASH_KEY.len()..line.len() - 2];
    let computed = hex::encode(Sha256::digest(&line[..own_at]));
    if own != computed.as_bytes() {
        return Err("sha256 does not match the line's text: this line was changed".to_string());
    }
    match value.get("prev").and_then(|p| p.as_str()) {
        Some(p) if p == prev => Ok(()),
        Some(_) => Err(
            "prev does not match the SHA-256 of the line before: a line before this one was \
             changed, removed or inserted"
                .to_string(),
        ),
        None => Err("no \"prev\" field".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn entry(status: u16) -> AuditEntry {
        AuditEntry {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            token: Some("ops".to_string()),
            role: Some("operator"),
            token_tenant: None,
            tenant: Some("acme".to_string()),
            call: None,
            method: "GET".to_string(),
            path: "/v1/calls?tenant=acme".to_string(),
            status,
        }
    }

    #[test]
    fn chain_and_tamper() {
        let buf = Buf::default();
        let log = AuditLog::to_writer(Box::new(buf.clone()));
        for s in [200, 401, 404] {
            log.record(&entry(s)).expect("write");
        }
        let bytes = buf.0.lock().expect("lock").clone();
        let (n, _) = verify_bytes(&bytes).expect("verifies");
        assert_eq!(n, 3);
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(
            "{\"time\":\"2023-11-14T22:13:20.250Z\",\"token\":\"ops\",\"role\":\"operator\",\"token_tenant\":null,\"tenant\":\"acme\",\"call\":null,\"method\":\"GET\",\"path\":\"/v1/calls?tenant=acme\",\"status\":200,"
        ));
        assert!(lines[0].contains(&format!("\"prev\":\"{GENESIS}\"")));
        let first_hash = hex::encode(Sha256::digest(lines[0].as_bytes()));
        assert!(lines[1].contains(&format!("\"prev\":\"{first_hash}\"")));

        // One changed byte in the status of line 2: line 2's own hash catches it.
        let mut t = bytes.clone();
        let at = text.find("\"status\":401").expect("line 2") + 9;
        t[at] = b'5';
        assert_eq!(verify_bytes(&t).expect_err("tampered").line, 2);

        // Line 2 removed: line 3's prev no longer matches.
        let without: String = [lines[0], lines[2]]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        let e = verify_bytes(without.as_bytes()).expect_err("removed");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("prev"), "{}", e.reason);

        // Truncated last line.
        let e = verify_bytes(&bytes[..bytes.len() - 5]).expect_err("cut");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("incomplete"));

        // Garbage line.
        let e = verify_bytes(b"hello\n").expect_err("junk");
        assert_eq!(e.line, 1);
        assert_eq!(verify_bytes(b"").expect("empty").0, 0);
    }

    #[test]
    fn cluster_events_are_chained_lines() {
        use sbc_core::audit::{AuditSink, ClusterAudit, ClusterEvent};
        let buf = Buf::default();
        let log = AuditLog::to_writer(Box::new(buf.clone()));
        log.cluster(&ClusterAudit {
            event: ClusterEvent::TakenOver,
            node: "b".into(),
            peer: "a".into(),
            calls: 2,
            detail: "claimed:2,installed:2,refused:0,ms:4".into(),
        })
        .expect("write");
        let bytes = buf.0.lock().expect("lock").clone();
        assert_eq!(verify_bytes(&bytes).expect("verifies").0, 1);
        let text = String::from_utf8(bytes).expect("utf8");
        assert!(text.contains("\"method\":\"CLUSTER\""), "{text}");
        assert!(
            text.contains("cluster/taken_over?node=b&peer=a&calls=2&detail=claimed:2"),
            "{text}"
        );
    }

    #[test]
    fn write_failure_breaks_the_log() {
        let log = AuditLog::to_writer(Box::new(Failing));
        assert!(log.record(&entry(200)).is_err());
        assert!(log.record(&entry(200)).is_err());
    }

    #[test]
    fn open_continues_and_refuses_broken_files() {
        let dir = std::env::temp_dir().join(format!("sbc-admin-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        {
            let log = AuditLog::open(&path).expect("new");
            log.record(&entry(200)).expect("write");
        }
        {
            let log = AuditLog::open(&path).expect("continue");
            log.record(&entry(204)).expect("write");
        }
        assert_eq!(verify_audit(&path).expect("chain spans reopen"), 2);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.push(b'{');
        std::fs::write(&path, &bytes).expect("write");
        let e = AuditLog::open(&path).expect_err("incomplete last line");
        assert_eq!(e.line, 3);
        let e = verify_audit(&dir.join("missing")).expect_err("missing");
        assert_eq!(e.line, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn long_paths_are_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_AUDIT_PATH);
        let t = truncate(&s, MAX_AUDIT_PATH);
        assert!(t.len() <= MAX_AUDIT_PATH);
        assert!(s.starts_with(t));
    }
}
