//! Shared test fixture: a real admin listener on loopback, a minimal HTTP/1.1 client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use sbc_admin::{AdminConfig, AdminHandle, AdminState, AuditLog, Role, TokenEntry};
use sbc_core::admission::{Admission, Admitted};
use sbc_core::config::Limits;
use sbc_core::registry::{
    CallId, CallRecord, CallRegistry, CallState, DrainState, LegDirection, MediaCounters,
};
use sbc_core::tenant::TenantId;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const OPS: &str = "ops-7f3c9a2e5b1d4f60";
pub const VIEW_A: &str = "view-a-0b8e4c1f9d2a";
pub const VIEW_B: &str = "view-b-5c2d7e0a3f9b";
pub const REC_A: &str = "rec-a-9e1f4b7c2d8a";

pub const CALLER_A: &str = "+15551234534";
pub const CALLEE_A: &str = "+15559876543";
pub const SIP_CALL_ID_A: &str = "a84b4c76e66710@pbx.acme.example";
pub const SIP_CALL_ID_A_OUT: &str = "out-5f0e1d2c3b4a@sbc.internal";
/// 2023-11-14T22:13:20Z
pub const START_A: u64 = 1_700_000_000;

/// The process-wide Prometheus handle (installed once per test binary).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| sbc_admin::install_prometheus().expect("first install in this process"))
        .clone()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sbc-admin-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn token(id: &str, secret: &str, role: Role) -> TokenEntry {
    TokenEntry {
        id: id.to_string(),
        sha256: Sha256::digest(secret.as_bytes()).into(),
        role,
    }
}

pub fn tokens() -> Vec<TokenEntry> {
    vec![
        token("ops", OPS, Role::Operator),
        token("view-a", VIEW_A, Role::Viewer(TenantId::from("a"))),
        token("view-b", VIEW_B, Role::Viewer(TenantId::from("b"))),
        token("rec-a", REC_A, Role::Recorder(TenantId::from("a"))),
    ]
}

pub struct Fixture {
    pub handle: AdminHandle,
    pub addr: SocketAddr,
    pub registry: Arc<CallRegistry>,
    pub drain: Arc<DrainState>,
    pub audit_path: PathBuf,
    pub dir: PathBuf,
    pub call_a: CallId,
    pub call_b: CallId,
    pub admission: Arc<Admission>,
    /// Keeps one of tenant a's concurrent-call slots taken.
    pub admitted: Admitted,
}

/// Tenants a and b, one call each (a's established with both legs and counters), tenant a
/// with one admitted call, the drain state ready.
pub async fn start(name: &str, mut cfg: AdminConfig) -> Fixture {
    let dir = temp_dir(name);
    let registry = Arc::new(CallRegistry::new());
    let call_a = registry
        .register(CallRecord {
            tenant: TenantId::from("a"),
            start: UNIX_EPOCH + Duration::from_secs(START_A),
            caller: CALLER_A.to_string(),
            callee: CALLEE_A.to_string(),
            inbound_sip_call_id: SIP_CALL_ID_A.to_string(),
        })
        .expect("room");
    assert!(registry.set_state(&call_a, CallState::Established));
    assert!(registry.add_outbound_leg(&call_a, SIP_CALL_ID_A_OUT.to_string()));
    assert!(registry.set_counters(
        &call_a,
        LegDirection::Inbound,
        MediaCounters {
            packets_received: 1500,
            packets_sent: 1490,
            packets_lost: 3,
        }
    ));
    let call_b = registry
        .register(CallRecord {
            tenant: TenantId::from("b"),
            start: SystemTime::now(),
            caller: "+442071230000".to_string(),
            callee: "+442071239999".to_string(),
            inbound_sip_call_id: "b-sip-call-id@trunk.b.example".to_string(),
        })
        .expect("room");
    let limits = |cps: f64, burst: u32, max: u32| Limits {
        calls_per_second: cps,
        call_burst: burst,
        max_concurrent_calls: max,
        max_pending_invites: 7,
        requests_per_second_per_connection: 100.0,
        ..Limits::default()
    };
    let admission = Arc::new(Admission::with_limits([
        (TenantId::from("a"), limits(5.0, 10, 50)),
        (TenantId::from("b"), limits(2.0, 4, 8)),
    ]));
    let admitted = admission
        .admit_call(&TenantId::from("a"), Instant::now())
        .expect("admitted");
    let drain = Arc::new(DrainState::new());
    drain.set_ready(true);
    let audit_path = dir.join("audit.jsonl");
    let usage = admission.clone();
    let state = AdminState {
        registry: registry.clone(),
        usage: Arc::new(move |t: &TenantId| usage.usage(t)),
        drain: drain.clone(),
        prometheus: prometheus(),
        tenants: vec![TenantId::from("a"), TenantId::from("b")],
        audit: Arc::new(AuditLog::open(&audit_path).expect("audit log")),
        taps: None,
    };
    cfg.address = "127.0.0.1:0".parse().expect("addr");
    let handle = sbc_admin::serve(cfg, state).await.expect("serve");
    let addr = handle.local_addr();
    Fixture {
        handle,
        addr,
        registry,
        drain,
        audit_path,
        dir,
        call_a,
        call_b,
        admission,
        admitted,
    }
}

pub fn config(redact_numbers: bool) -> AdminConfig {
    AdminConfig {
        tokens: tokens(),
        redact_numbers,
        ..AdminConfig::default()
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    authorization: Option<String>,
) -> io::Result<Resp> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timed out"))?;
    match read {
        Ok(_) => {}
        // A peer that closes without TLS close_notify: keep what arrived.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse(&buf)
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<String>,
) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    send(stream, method, path, authorization)
        .await
        .expect("HTTP exchange")
}

fn parse(buf: &[u8]) -> io::Result<Resp> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = HashMap::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = buf[end + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if body.len() < len {
            return Err(bad("short body"));
        }
        body.truncate(len);
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The audit file's lines, parsed.
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("audit file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}
