//! Protection of the whole gateway: the per-source flood guard (`[flood_guard]`) and the
//! global overload limits (`[overload]`).
//!
//! Owns: both raw sections, their bounds, and their validation into [`FloodSettings`] and
//! [`OverloadSettings`]. Must not: count, block or shed anything (`crate::flood` and the
//! SIP server do).

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, parse_net, ConfigError};
use crate::flood::{FloodAction, FloodSettings};

/// Most per-source entries the flood guard may be configured to track.
pub const MAX_TRACKED_SOURCES: usize = 10_000_000;

/// Capacity of the queue in front of the SIP core (see `sbc-sip`'s server).
pub const CORE_QUEUE_CAPACITY: usize = 8192;

/// Global overload protection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverloadSettings {
    /// New calls per second for the whole gateway (0: no global limit).
    pub max_calls_per_second: f64,
    /// Messages waiting for the SIP core past which new INVITEs get 503.
    pub max_core_queue: usize,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        OverloadSettings {
            max_calls_per_second: 0.0,
            max_core_queue: 6144,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFlood {
    enabled: bool,
    window_secs: f64,
    max_requests: u32,
    block_secs: u64,
    action: String,
    allowlist: Vec<String>,
    max_handshakes_per_second: u32,
    max_connections_per_source: u32,
    max_tracked_sources: usize,
}

impl Default for RawFlood {
    fn default() -> Self {
        let d = FloodSettings::default();
        RawFlood {
            enabled: d.enabled,
            window_secs: d.window.as_secs_f64(),
            max_requests: d.max_requests,
            block_secs: d.block_for.as_secs(),
            action: "drop".to_string(),
            allowlist: Vec::new(),
            max_handshakes_per_second: d.max_handshakes_per_second,
            max_connections_per_source: d.max_connections,
            max_tracked_sources: d.max_tracked_sources,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOverload {
    max_calls_per_second: f64,
    max_core_queue: usize,
}

impl Default for RawOverload {
    fn default() -> Self {
        let d = OverloadSettings::default();
        RawOverload {
            max_calls_per_second: d.max_calls_per_second,
            max_core_queue: d.max_core_queue,
        }
    }
}

pub(super) fn validate_flood(f: &RawFlood) -> Result<FloodSettings, ConfigError> {
    if !(f.window_secs.is_finite() && (0.1..=3600.0).contains(&f.window_secs)) {
        return Err(invalid(
            "flood_guard.window_secs",
            "must be between 0.1 and 3600",
        ));
    }
    if f.max_requests == 0 {
        return Err(invalid("flood_guard.max_requests", "must be at least 1"));
    }
    if !(1..=86_400).contains(&f.block_secs) {
        return Err(invalid(
            "flood_guard.block_secs",
            "must be between 1 and 86400",
        ));
    }
    let action = match f.action.as_str() {
        "drop" => FloodAction::Drop,
        "503" => FloodAction::Reply503,
        other => {
            return Err(invalid(
                "flood_guard.action",
                format!("{other:?} must be \"drop\" or \"503\""),
            ))
        }
    };
    let mut allowlist = Vec::new();
    for (i, c) in f.allowlist.iter().enumerate() {
        let net = parse_net(c).ok_or_else(|| {
            invalid(
                format!("flood_guard.allowlist[{i}]"),
                format!("{c:?} is not an address or CIDR"),
            )
        })?;
        allowlist.push(net);
    }
    if f.max_handshakes_per_second == 0 {
        return Err(invalid(
            "flood_guard.max_handshakes_per_second",
            "must be at least 1",
        ));
    }
    if f.max_connections_per_source == 0 {
        return Err(invalid(
            "flood_guard.max_connections_per_source",
            "must be at least 1",
        ));
    }
    if !(1..=MAX_TRACKED_SOURCES).contains(&f.max_tracked_sources) {
        return Err(invalid(
            "flood_guard.max_tracked_sources",
            format!("must be between 1 and {MAX_TRACKED_SOURCES}"),
        ));
    }
    Ok(FloodSettings {
        enabled: f.enabled,
        window: Duration::from_secs_f64(f.window_secs),
        max_requests: f.max_requests,
        block_for: Duration::from_secs(f.block_secs),
        action,
        allowlist,
        max_handshakes_per_second: f.max_handshakes_per_second,
        max_connections: f.max_connections_per_source,
        max_tracked_sources: f.max_tracked_sources,
    })
}

pub(super) fn validate_overload(o: &RawOverload) -> Result<OverloadSettings, ConfigError> {
    if !(o.max_calls_per_second.is_finite() && (0.0..=1e6).contains(&o.max_calls_per_second)) {
        return Err(invalid(
            "overload.max_calls_per_second",
            "must be between 0 (off) and 1000000",
        ));
    }
    if !(1..=CORE_QUEUE_CAPACITY).contains(&o.max_core_queue) {
        return Err(invalid(
            "overload.max_core_queue",
            format!("must be between 1 and {CORE_QUEUE_CAPACITY}"),
        ));
    }
    Ok(OverloadSettings {
        max_calls_per_second: o.max_calls_per_second,
        max_core_queue: o.max_core_queue,
    })
}
