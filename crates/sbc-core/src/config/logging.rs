//! `[logging]`: the log filter, text or JSON lines, and how phone numbers appear.
//!
//! Owns: the raw section, its validation into [`LoggingSettings`], and the log filter
//! syntax ([`valid_log_filter`], also used by the admin plane's `PUT /v1/log-level`).
//! Must not: install a subscriber (the binary does).

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::redact::Redaction;

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoggingSettings {
    /// A tracing filter (`info`, `sbc_sip=debug,info`, ...); `RUST_LOG` overrides it.
    pub level: Option<String>,
    /// JSON lines instead of text (`--log-json` also turns it on).
    pub json: bool,
    /// How phone numbers appear in logs.
    pub redact_numbers: Redaction,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLogging {
    level: Option<String>,
    format: Option<String>,
    redact_numbers: Option<String>,
}

/// Longest log filter accepted (`logging.level`, `PUT /v1/log-level`): a filter naming a
/// level for each crate of the gateway fits in a tenth of it.
pub const MAX_LOG_FILTER_LEN: usize = 1024;

/// True if `filter` is a log filter as `logging.level` takes it: a level (`info`) or
/// comma-separated `target=level` directives, of `[A-Za-z0-9_=,:-]` only.
pub fn valid_log_filter(filter: &str) -> bool {
    !filter.is_empty()
        && filter.len() <= MAX_LOG_FILTER_LEN
        && filter
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=,:-".contains(c))
}

pub(super) fn validate_logging(l: &RawLogging) -> Result<LoggingSettings, ConfigError> {
    if let Some(level) = &l.level {
        if !valid_log_filter(level) {
            return Err(invalid(
                "logging.level",
                format!("{level:?} is not a log filter"),
            ));
        }
    }
    let json = match l.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(invalid(
                "logging.format",
                format!("{other:?} must be \"text\" or \"json\""),
            ))
        }
    };
    let redact_numbers = match l.redact_numbers.as_deref() {
        None => Redaction::Off,
        Some(v) => Redaction::parse(v).ok_or_else(|| {
            invalid(
                "logging.redact_numbers",
                format!("{v:?} must be \"off\", \"mask\" or \"hash\""),
            )
        })?,
    };
    Ok(LoggingSettings {
        level: l.level.clone(),
        json,
        redact_numbers,
    })
}
