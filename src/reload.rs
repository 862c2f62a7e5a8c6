//! SIGHUP: read the config file again, apply what can change while running, and log each
//! changed key by name: applied ones at info, ones that wait for a restart at warn with
//! why (`sbc_core::reload::diff` decides which is which). A file that does not validate is
//! refused whole and the running config kept. Wiring only.

use std::path::Path;
use std::sync::Arc;

use sbc_core::config::Config;
use sbc_core::reload::{diff, Applied, Change, LogLevelControl};
use sbc_sip::server::ServerHandle;

use crate::logging::LogControl;

/// What the gateway runs on: the config it started with (keys that need a restart keep
/// its values) and the last one applied (keys that are live have its values).
pub struct Running {
    pub started: Arc<Config>,
    pub current: Arc<Config>,
}

/// The changes to report for `new`: live ones against the last applied config, and ones
/// needing a restart against the config started with (so each reload names them again
/// until the restart).
fn changes(running: &Running, new: &Config) -> Vec<Change> {
    let mut out: Vec<Change> = diff(&running.current, new)
        .into_iter()
        .filter(|c| !matches!(c.applied, Applied::NeedsRestart { .. }))
        .collect();
    out.extend(
        diff(&running.started, new)
            .into_iter()
            .filter(|c| matches!(c.applied, Applied::NeedsRestart { .. })),
    );
    out
}

/// Reload from `path`; on success `running.current` becomes the new config.
pub async fn reload(
    server: &ServerHandle,
    admin: &sbc_admin::AdminHandle,
    log: &LogControl,
    path: Option<&Path>,
    running: &mut Running,
) -> Result<String, String> {
    let Some(path) = path else {
        tracing::warn!(
            event = "reload_skipped",
            "SIGHUP: running on the embedded default, nothing to reload"
        );
        return Err("running on the embedded default config: nothing to reload".to_string());
    };
    let loaded = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| crate::admin_config(&cfg).map(|a| (cfg, a)));
    let (cfg, admin_cfg) = match loaded {
        Ok(x) => x,
        Err(e) => {
            let tls_file = e
                .downcast_ref::<sbc_core::config::ConfigError>()
                .is_some_and(sbc_core::config::certs::is_tls_file_error);
            if tls_file {
                // A certificate, key or CA file that cannot be used: its swap is refused.
                metrics::counter!("sbc_tls_reload_total", "result" => "refused").increment(1);
            }
            tracing::error!(event = "reload_rejected", config = %path.display(), error = %e, "SIGHUP: config invalid; keeping the running one");
            return Err(format!(
                "{}: invalid, the running config is kept: {e:#}",
                path.display()
            ));
        }
    };
    let cfg = Arc::new(cfg);
    let changes = changes(running, &cfg);
    let tls_swapped = match server.reload(cfg.clone()).await {
        Ok(lines) => lines,
        Err(e) => {
            tracing::error!(event = "reload_rejected", config = %path.display(), error = %e, "SIGHUP: config cannot be served; nothing applied, keeping the running one");
            return Err(format!(
                "{}: cannot be served, nothing applied: {e}",
                path.display()
            ));
        }
    };
    // New tenants' series exist at 0 from the next scrape.
    crate::telemetry::tenants_changed(&cfg);
    let mut problems = Vec::new();
    if let Err(e) = admin.reload(&admin_cfg) {
        tracing::error!(event = "reload_failed", error = %e, "admin tokens not reloaded; keeping the running ones");
        problems.push(format!("admin tokens not reloaded: {e}"));
    }
    if cfg.logging.level != running.current.logging.level {
        let level = cfg.logging.level.as_deref().unwrap_or("info");
        if let Err(e) = log.set(level) {
            tracing::error!(event = "reload_failed", key = "logging.level", error = %e, "log level not changed");
            problems.push(format!("log level not changed: {e}"));
        }
    }
    let mut not_applied = 0;
    for c in &changes {
        match c.applied {
            Applied::Live => {
                tracing::info!(event = "config_key_applied", key = %c.key, "reload: {} applied", c.key)
            }
            Applied::Partly { why } => {
                not_applied += 1;
                tracing::warn!(event = "config_key_partly_applied", key = %c.key, why, "reload: {} applied to calls, not everywhere: {why}", c.key);
            }
            Applied::NeedsRestart { why } => {
                not_applied += 1;
                tracing::warn!(event = "config_key_not_applied", key = %c.key, why, "reload: {} changed but needs a restart: {why}", c.key);
            }
        }
    }
    tracing::info!(
        event = "config_reloaded",
        config = %path.display(),
        changed = changes.len(),
        not_applied,
        "SIGHUP: config reloaded"
    );
    running.current = cfg;
    let mut summary = format!(
        "{}: {} changed key(s), {not_applied} not applied (see the log)",
        path.display(),
        changes.len()
    );
    for line in tls_swapped.into_iter().chain(problems) {
        summary.push_str("; ");
        summary.push_str(&line);
    }
    Ok(summary)
}
