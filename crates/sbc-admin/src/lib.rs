//! sbc-admin: the admin HTTP plane. Health, readiness, Prometheus metrics, live calls,
//! per-tenant usage and drain, behind bearer tokens, with a hash-chained audit log.
//!
//! Owns: the admin listener (HTTP, or HTTPS with optional client certificates), token
//! authentication and roles, the JSON API (see `openapi.yaml` beside this crate's
//! `Cargo.toml`), and the audit log. Must not: reach into sbc-sip or sbc-media; it reads
//! state only through sbc-core's interfaces ([`CallRegistry`], [`DrainState`], a usage
//! source over [`sbc_core::admission::Admission::usage`]).
//!
//! `/healthz`, `/readyz` and `/metrics` need no token, so probes and scrapers work without
//! secrets; metrics carry counters labelled by tenant, direction and reason, never a token,
//! key, number, address or call id. Everything under `/v1` needs a token and is audited.
//! Recording taps (`/v1/calls/{id}/taps`, `/v1/taps/{tap_id}`, and the WebSocket tap
//! `/v1/calls/{id}/tap/ws`) go through [`sbc_core::tap::TapControl`] when
//! [`AdminState::taps`] is set, else they answer 501. SIPREC recording sessions
//! (`/v1/calls/{id}/recordings[/{action}]`) go through
//! [`sbc_core::recording::RecordingControl`] when [`AdminState::recordings`] is set, else
//! they answer 501. The hot standby (`/v1/cluster/takeover`, `/v1/cluster/standby`) goes
//! through [`sbc_core::standby::StandbyControl`] once [`AdminHandle::set_standby`] hands
//! it in, else both answer 409. The tokens and `redact_numbers`
//! can be replaced while serving ([`AdminHandle::reload`], on SIGHUP). `POST /v1/reload`
//! runs the gateway's reload through the [`ReloadHook`] the binary hands in
//! ([`AdminHandle::on_reload`]). [`client`] is the HTTP client of this API that
//! `sbc-edge ctl` uses.
//!
//! Wiring, in the gateway's `main`:
//!
//! ```no_run
//! # async fn wire(
//! #     registry: std::sync::Arc<sbc_core::registry::CallRegistry>,
//! #     drain: std::sync::Arc<sbc_core::registry::DrainState>,
//! #     admission: std::sync::Arc<sbc_core::admission::Admission>,
//! #     tenants: Vec<sbc_core::tenant::TenantId>,
//! #     file_text: &str,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let cfg = sbc_admin::AdminConfig::from_config_file_str(file_text, std::path::Path::new("."))?
//!     .unwrap_or_default();
//! let prometheus = sbc_admin::install_prometheus()?; // once per process
//! let state = sbc_admin::AdminState {
//!     registry,
//!     usage: Arc::new(move |t: &sbc_core::tenant::TenantId| admission.usage(t)),
//!     drain,
//!     prometheus,
//!     tenants,
//!     audit: Arc::new(sbc_admin::AuditLog::open(std::path::Path::new("audit.jsonl"))?),
//!     taps: None, // or Some(media_engine.tap_control())
//!     recordings: None, // or Some(the SIP server's recording control)
//! };
//! let handle = sbc_admin::serve(cfg, state).await?;
//! println!("admin on {}", handle.local_addr());
//! // ... on SIGHUP, with the file read again:
//! # let new_cfg = sbc_admin::AdminConfig::default();
//! handle.reload(&new_cfg)?;
//! // ... on SIGTERM:
//! handle.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sbc_core::recording::RecordingControl;
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_core::tap::TapControl;
use sbc_core::tenant::TenantId;

mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
mod log_level;
mod recordings;
mod server;
mod standby;
mod ws_tap;

pub use api::mask_number;
pub use audit::{verify_audit, AuditEntry, AuditError, AuditLog};
pub use auth::token_sha256_hex;
pub use config::{AdminConfig, AdminConfigError, AdminTls, RawAdminConfig, Role, TokenEntry};
pub use server::AdminHandle;

/// A tenant's usage against its limits, or `None` for a tenant admission does not know.
/// Typically `Arc::new(move |t| admission.load().usage(t))` over the current generation.
pub use sbc_core::admission::UsageSource;

/// What `POST /v1/reload` runs: the gateway's own reload (the one SIGHUP triggers), handed
/// in by the binary with [`AdminHandle::on_reload`], so this crate needs nothing of the
/// SIP side. Resolves to what was applied (`Ok`, a line for the answer) or why nothing
/// was (`Err`: an invalid file, no file to reload); either way the running config stays
/// consistent.
pub type ReloadHook = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// What the admin plane reads and writes. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    /// Calls in progress, as recorded by the SIP side.
    pub registry: Arc<CallRegistry>,
    /// Per-tenant usage (admission).
    pub usage: UsageSource,
    /// Readiness and drain flags; `POST /v1/drain` sets draining.
    pub drain: Arc<DrainState>,
    /// Renders `/metrics`; from [`install_prometheus`].
    pub prometheus: PrometheusHandle,
    /// The configured tenants; a tenant not listed is a 404 everywhere.
    pub tenants: Vec<TenantId>,
    /// Where audit lines go.
    pub audit: Arc<AuditLog>,
    /// Recording taps (the media relay); `None`: the tap endpoints answer 501.
    pub taps: Option<Arc<dyn TapControl>>,
    /// The SIPREC recording client (the B2BUA's); `None`: the recording endpoints answer
    /// 501.
    pub recordings: Option<Arc<dyn RecordingControl>>,
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminState")
            .field("calls", &self.registry.len())
            .field("drain", &self.drain)
            .field("tenants", &self.tenants)
            .field("taps", &self.taps.is_some())
            .field("recordings", &self.recordings.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the admin plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The settings do not fit the rest of the config (e.g. a token for an unknown tenant).
    #[error(transparent)]
    Config(#[from] AdminConfigError),
    /// The certificate, key or client CA is unusable.
    #[error("admin TLS: {0}")]
    Tls(String),
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The Prometheus recorder cannot be installed (one is installed already).
    #[error("cannot install the Prometheus recorder: {0}")]
    Prometheus(String),
}

/// How often histograms are folded into their summaries when nothing scrapes.
const PROMETHEUS_UPKEEP: Duration = Duration::from_secs(5);

/// Install the process-wide Prometheus recorder (the `metrics` crate's global recorder) and
/// return the handle that renders it. Call once per process, before anything records a
/// metric that should be seen; a second call fails. Starts a small thread that runs the
/// recorder's upkeep every 5 seconds, so histogram data does not pile up between scrapes.
///
/// The histograms get the buckets the metrics catalog gives them
/// (`sbc_core::metrics_catalog`), every metric its HELP text, and the `process_*` metrics
/// (metrics-process) are described here and refreshed on each scrape of `/metrics`.
pub fn install_prometheus() -> Result<PrometheusHandle, AdminError> {
    use sbc_core::metrics_catalog::{self, Kind};
    let mut builder = PrometheusBuilder::new();
    for m in metrics_catalog::CATALOG
        .iter()
        .filter(|m| m.kind == Kind::Histogram)
    {
        builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(m.name.to_string()),
                m.buckets,
            )
            .map_err(|e| AdminError::Prometheus(e.to_string()))?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| AdminError::Prometheus(e.to_string()))?;
    metrics_catalog::describe_all();
    process_metrics().describe();
    process_metrics().collect();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("prometheus-upkeep".to_string())
        .spawn(move || loop {
            std::thread::sleep(PROMETHEUS_UPKEEP);
            upkeep.run_upkeep();
        })
        .map_err(|e| AdminError::Prometheus(format!("cannot start the upkeep thread: {e}")))?;
    Ok(handle)
}

/// The `process_*` collector, refreshed by each scrape of `/metrics`.
pub(crate) fn process_metrics() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Bind the admin listener on `cfg.address` and serve until the returned handle is shut
/// down or dropped. Fails if a token names a tenant not in `state.tenants`, the TLS material
/// is unusable, or the address cannot be bound.
pub async fn serve(cfg: AdminConfig, state: AdminState) -> Result<AdminHandle, AdminError> {
    cfg.check_tenants(&state.tenants)?;
    let tls = cfg.tls.as_ref().map(server::tls_acceptor).transpose()?;
    if cfg.tokens.is_empty() {
        tracing::info!("no admin tokens configured: only /healthz, /readyz and /metrics answer");
    }
    let shared = Arc::new(api::Shared::new(
        state,
        api::Live {
            tokens: cfg.tokens.clone(),
            redact_numbers: cfg.redact_numbers,
        },
    ));
    server::start(cfg, tls, shared).await
}

impl AdminHandle {
    /// Shows cluster admission in `/readyz` and `GET /v1/tenants/{id}/usage` (once; a
    /// second call changes nothing).
    pub fn set_cluster(&self, info: Arc<dyn sbc_core::cluster::ClusterInfo>) {
        let _ = self.shared.cluster.0.set(info);
    }

    /// Lets `POST /v1/cluster/takeover` and `GET /v1/cluster/standby` reach the hot standby
    /// (`[cluster.standby]`; until then both answer 409, "not a standby"). Once: a second
    /// call returns false and changes nothing.
    pub fn set_standby(&self, control: Arc<dyn sbc_core::standby::StandbyControl>) -> bool {
        self.shared.standby.set(control)
    }

    /// Lets `GET`/`PUT /v1/log-level` read and change the process's log filter through
    /// `control` (until then they answer 501).
    pub fn set_log_level_control(&self, control: Arc<dyn sbc_core::reload::LogLevelControl>) {
        self.shared.log_level.set(control);
    }

    /// Lets `GET /v1/trunks` answer from `board` (the SIP server's; until then it
    /// answers 501). Once: a second call returns false and changes nothing.
    pub fn set_trunk_board(&self, board: Arc<sbc_core::trunks::TrunkBoard>) -> bool {
        self.shared.trunks.set(board).is_ok()
    }

    /// Wires `POST /v1/reload` to `hook` (until then it answers 501). Once: a second call
    /// returns false and changes nothing.
    pub fn on_reload(&self, hook: ReloadHook) -> bool {
        self.shared.reload.0.set(hook).is_ok()
    }

    /// Applies a reloaded `[admin]` section: its tokens and `redact_numbers` take effect
    /// for the next request (a removed token is refused from then on; requests already
    /// authenticated finish), and a changed HTTPS certificate, key or client CA is swapped
    /// in for new connections (one that cannot be used is refused, logged and counted,
    /// the old kept). The address, turning HTTPS on or off, and the audit log need a
    /// restart: a change there is logged and not applied. Fails, changing nothing, if a token names a
    /// tenant the gateway does not have.
    pub fn reload(&self, cfg: &AdminConfig) -> Result<(), AdminError> {
        cfg.check_tenants(&self.shared.state.tenants)?;
        let was = &self.started;
        if cfg.address != was.address {
            tracing::warn!(event = "reload_needs_restart", old = %was.address, new = %cfg.address,
                "admin.address changed: needs a restart, not applied");
        }
        self.reload_tls(cfg.tls.as_ref());
        if cfg.audit_log != was.audit_log {
            tracing::warn!(
                event = "reload_needs_restart",
                "admin.audit_log changed: needs a restart, not applied"
            );
        }
        self.shared.replace_live(api::Live {
            tokens: cfg.tokens.clone(),
            redact_numbers: cfg.redact_numbers,
        });
        tracing::info!(
            event = "admin_reload",
            tokens = cfg.tokens.len(),
            redact_numbers = cfg.redact_numbers,
            "admin tokens reloaded"
        );
        Ok(())
    }
}

impl AdminHandle {
    /// Swaps the HTTPS certificate, key and client CA for new connections when they
    /// changed (connections already accepted keep theirs); material that cannot be used
    /// is refused and the old kept. Turning HTTPS on or off needs a restart.
    fn reload_tls(&self, new: Option<&AdminTls>) {
        let (hot, new) = match (&self.tls, new) {
            (None, None) => return,
            (Some(hot), Some(new)) => (hot, new),
            _ => {
                tracing::warn!(
                    event = "reload_needs_restart",
                    "admin HTTPS turned on or off: needs a restart, not applied"
                );
                return;
            }
        };
        let mut in_use = hot.in_use.lock().unwrap_or_else(|p| p.into_inner());
        if same_tls(Some(&in_use), Some(new)) {
            return;
        }
        match server::tls_acceptor(new) {
            Ok(acceptor) => {
                *hot.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
                *in_use = new.clone();
                metrics::counter!("sbc_tls_reload_total", "result" => "swapped").increment(1);
                tracing::info!(
                    event = "certificate_swapped",
                    listener = "admin",
                    "admin HTTPS certificate, key or client CA swapped for new connections"
                );
            }
            Err(e) => {
                metrics::counter!("sbc_tls_reload_total", "result" => "refused").increment(1);
                tracing::warn!(event = "certificate_reload_refused", listener = "admin", reason = %e,
                    "admin HTTPS material cannot be used: the material in use is kept");
            }
        }
    }
}

fn same_tls(a: Option<&AdminTls>, b: Option<&AdminTls>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.cert_pem == b.cert_pem
                && *a.key_pem == *b.key_pem
                && a.client_ca_pem == b.client_ca_pem
        }
        _ => false,
    }
}
