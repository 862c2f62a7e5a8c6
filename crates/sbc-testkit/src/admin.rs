//! The admin plane in a test: a real admin listener on loopback over a registry with one
//! call for each of tenants `a` and `b` ([`start`], [`Fixture`]), the bearer tokens it
//! accepts, the process-wide Prometheus handle and the audit file's lines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use sbc_admin::{AdminConfig, AdminHandle, AdminState, AuditLog, Role, TokenEntry};
use sbc_core::admission::{Admission, Admitted};
use sbc_core::config::Limits;
use sbc_core::recording::RecordingControl;
use sbc_core::registry::{
    CallId, CallRecord, CallRegistry, CallState, DrainState, LegDirection, MediaCounters,
};
use sbc_core::tenant::TenantId;
use sha2::{Digest, Sha256};

use crate::files::temp_dir;

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

/// The process-wide Prometheus handle (installed once per test binary: the recorder is
/// global).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| sbc_admin::install_prometheus().expect("first install in this process"))
        .clone()
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
pub async fn start(name: &str, cfg: AdminConfig) -> Fixture {
    start_with(name, cfg, None).await
}

/// [`start`] with a recording client (SIPREC) behind `/v1/calls/{id}/recordings`.
pub async fn start_with(
    name: &str,
    mut cfg: AdminConfig,
    recordings: Option<Arc<dyn RecordingControl>>,
) -> Fixture {
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
        recordings,
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

/// The audit file's lines, parsed.
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("audit file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}
