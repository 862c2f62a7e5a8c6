//! The process's log subscriber: stderr, text or JSON lines, with a filter that can be
//! replaced while running (SIGHUP with a changed `logging.level`, or the admin plane's
//! `PUT /v1/log-level`). Wiring only: what a valid filter is lives in sbc-core.

use std::sync::{Arc, Mutex};

use sbc_core::config::valid_log_filter;
use sbc_core::reload::LogLevelControl;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Added to `logging.level` (not to `RUST_LOG`, which is taken as written): rustls warns
/// once per handshake when a peer sends an IP address as SNI (RFC 6066 allows only host
/// names, and many SIP trunks do it anyway); the handshake goes on, and recognition by SNI
/// never sees the address, so at our level that line is noise.
pub const QUIET_RUSTLS: &str = "rustls::msgs::handshake=error";

/// The filter in force and the handle that replaces it.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogLevelControl for LogControl {
    fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        if !valid_log_filter(filter) {
            return Err(format!("{filter:?} is not a log filter"));
        }
        let parsed = EnvFilter::try_new(filter).map_err(|e| format!("{filter:?}: {e}"))?;
        self.handle
            .reload(parsed)
            .map_err(|e| format!("the log subscriber is gone: {e}"))?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        Ok(())
    }
}

/// Logging to stderr: `RUST_LOG` if set, else `logging.level` (default `info`) plus
/// [`QUIET_RUSTLS`]; JSON lines (fields flat beside `message`) if `json`. Timestamps are RFC 3339 in UTC. The returned control replaces the filter.
pub fn init(level: Option<&str>, json: bool) -> Arc<LogControl> {
    let (text, filter) = match std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(&v).ok().map(|f| (v, f)))
    {
        Some(found) => found,
        None => {
            let text = format!("{},{QUIET_RUSTLS}", level.unwrap_or("info"));
            match EnvFilter::try_new(&text) {
                Ok(f) => (text, f),
                Err(_) => {
                    let text = format!("info,{QUIET_RUSTLS}");
                    let f = EnvFilter::new(&text);
                    (text, f)
                }
            }
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .init();
    Arc::new(LogControl {
        handle,
        current: Mutex::new(text),
    })
}
