//! Media in the config: the relay (`[media]`) and each tenant's media policy
//! (`[tenants.media]`: SRTP per leg, allowed SDES suites, and the recording tap).
//!
//! Owns: both raw sections, the suite names sbc-edge accepts ([`SRTP_SUITES`]), and their
//! validation into [`MediaSettings`] and a tenant's [`MediaPolicy`] (with its [`TapSpec`]).
//! Must not: open sockets or touch packets (the relay does); a tenant's stream and
//! bandwidth limits are filled in from `[tenants.limits]` by the tenant's validation.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::media::{LegPolicy, MediaPolicy, SrtpMode};
use crate::tap::{TapLegs, TapSpec, TapTransport};

/// Media anchoring (the relay).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaSettings {
    /// Off: SDP passes through untouched (media flows end to end, addresses not hidden).
    pub enabled: bool,
    /// Address the relay's UDP sockets bind to.
    pub address: IpAddr,
    /// Address written into SDP `c=` lines (default: `address`).
    pub advertised_address: IpAddr,
    /// Even first port and last port of the relay's port range.
    pub port_min: u16,
    pub port_max: u16,
    /// A call with no media in either direction this long is ended (BYE both legs).
    pub timeout: Duration,
    /// A latched peer must be silent this long before another may take over.
    pub relatch_after: Duration,
    /// Most m-lines in one SDP.
    pub max_streams: usize,
    /// Relay worker threads (0: one per core).
    pub workers: usize,
    /// Pause of a busy relay worker between looks at its sockets, so one wake-up serves
    /// many packets (0: no pause, the default). Adds up to this much latency.
    pub batch_interval: Duration,
    /// Bind the relay's sockets with `IP_FREEBIND` (Linux), so `address` may be a virtual
    /// IP this node does not hold yet (a cluster node whose keepalived has not given it
    /// the VIP at start, issue #16).
    pub freebind: bool,
}

impl Default for MediaSettings {
    fn default() -> Self {
        let lo = IpAddr::from([127, 0, 0, 1]);
        MediaSettings {
            enabled: true,
            address: lo,
            advertised_address: lo,
            port_min: 20_000,
            port_max: 29_999,
            timeout: Duration::from_secs(60),
            relatch_after: Duration::from_secs(5),
            max_streams: 8,
            workers: 0,
            batch_interval: Duration::ZERO,
            freebind: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMedia {
    enabled: bool,
    address: String,
    advertised_address: Option<String>,
    port_min: u16,
    port_max: u16,
    timeout_secs: u64,
    relatch_after_secs: u64,
    max_streams: usize,
    workers: usize,
    batch_interval_us: u64,
    freebind: bool,
}

impl Default for RawMedia {
    fn default() -> Self {
        let d = MediaSettings::default();
        RawMedia {
            enabled: d.enabled,
            address: d.address.to_string(),
            advertised_address: None,
            port_min: d.port_min,
            port_max: d.port_max,
            timeout_secs: d.timeout.as_secs(),
            relatch_after_secs: d.relatch_after.as_secs(),
            max_streams: d.max_streams,
            workers: d.workers,
            batch_interval_us: d.batch_interval.as_micros() as u64,
            freebind: d.freebind,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTenantMedia {
    caller_srtp: Option<String>,
    callee_srtp: Option<String>,
    caller_suites: Option<Vec<String>>,
    callee_suites: Option<Vec<String>>,
    record_to: Option<String>,
    record_legs: Option<String>,
}

/// The SDES suite names sbc-edge implements.
pub const SRTP_SUITES: [&str; 6] = [
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
    "AES_256_CM_HMAC_SHA1_80",
    "AES_256_CM_HMAC_SHA1_32",
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
];

pub(super) fn validate_media(m: &RawMedia) -> Result<MediaSettings, ConfigError> {
    let address: IpAddr = m.address.parse().map_err(|_| {
        invalid(
            "media.address",
            format!("{:?} is not an IP address", m.address),
        )
    })?;
    let advertised_address = match &m.advertised_address {
        Some(a) => a.parse().map_err(|_| {
            invalid(
                "media.advertised_address",
                format!("{a:?} is not an IP address"),
            )
        })?,
        None if address.is_unspecified() => {
            return Err(invalid(
                "media.advertised_address",
                "required when media.address is a wildcard (0.0.0.0 or ::)",
            ))
        }
        None => address,
    };
    if m.port_min % 2 != 0 || m.port_min < 1024 {
        return Err(invalid("media.port_min", "must be even and at least 1024"));
    }
    if m.port_max <= m.port_min {
        return Err(invalid("media.port_max", "must be above media.port_min"));
    }
    if !(1..=86_400).contains(&m.timeout_secs) {
        return Err(invalid("media.timeout_secs", "must be between 1 and 86400"));
    }
    if m.relatch_after_secs > 3600 {
        return Err(invalid("media.relatch_after_secs", "must be at most 3600"));
    }
    if !(1..=64).contains(&m.max_streams) {
        return Err(invalid("media.max_streams", "must be between 1 and 64"));
    }
    if m.workers > 256 {
        return Err(invalid(
            "media.workers",
            "must be at most 256 (0: one per core)",
        ));
    }
    if m.batch_interval_us > 5_000 {
        return Err(invalid(
            "media.batch_interval_us",
            "must be at most 5000 (it adds up to that much latency; 0: no pacing)",
        ));
    }
    if m.freebind {
        super::listeners::freebind_allowed("media.freebind", address)?;
    }
    Ok(MediaSettings {
        freebind: m.freebind,
        batch_interval: Duration::from_micros(m.batch_interval_us),
        enabled: m.enabled,
        address,
        advertised_address,
        port_min: m.port_min,
        port_max: m.port_max,
        timeout: Duration::from_secs(m.timeout_secs),
        relatch_after: Duration::from_secs(m.relatch_after_secs),
        max_streams: m.max_streams,
        workers: m.workers,
    })
}

pub(super) fn validate_tenant_media(
    m: &RawTenantMedia,
    key: &str,
) -> Result<MediaPolicy, ConfigError> {
    let d = MediaPolicy::default();
    let mode = |v: &Option<String>, field: &str, default: SrtpMode| match v.as_deref() {
        None => Ok(default),
        Some("required") => Ok(SrtpMode::Required),
        Some("optional") => Ok(SrtpMode::Optional),
        Some("plain") => Ok(SrtpMode::Plain),
        Some(other) => Err(invalid(
            format!("{key}.{field}"),
            format!("{other:?} must be \"required\", \"optional\" or \"plain\""),
        )),
    };
    let suites = |v: &Option<Vec<String>>,
                  field: &str,
                  default: &[String]|
     -> Result<Vec<String>, ConfigError> {
        let Some(list) = v else {
            return Ok(default.to_vec());
        };
        if list.is_empty() {
            return Err(invalid(
                format!("{key}.{field}"),
                "must name at least one suite",
            ));
        }
        for (i, s) in list.iter().enumerate() {
            if !SRTP_SUITES.contains(&s.as_str()) {
                return Err(invalid(
                    format!("{key}.{field}[{i}]"),
                    format!("{s:?} is not one of {}", SRTP_SUITES.join(", ")),
                ));
            }
        }
        Ok(list.clone())
    };
    Ok(MediaPolicy {
        caller: LegPolicy {
            srtp: mode(&m.caller_srtp, "caller_srtp", d.caller.srtp)?,
            suites: suites(&m.caller_suites, "caller_suites", &d.caller.suites)?,
        },
        callee: LegPolicy {
            srtp: mode(&m.callee_srtp, "callee_srtp", d.callee.srtp)?,
            suites: suites(&m.callee_suites, "callee_suites", &d.callee.suites)?,
        },
        max_streams: 0,
        bandwidth_kbps: 0,
        record: validate_record(m, key)?,
    })
}

/// `record_to` (a recorder's `IP:port`) and `record_legs`: the tenant's automatic tap.
fn validate_record(m: &RawTenantMedia, key: &str) -> Result<Option<TapSpec>, ConfigError> {
    let Some(to) = &m.record_to else {
        if m.record_legs.is_some() {
            return Err(invalid(
                format!("{key}.record_legs"),
                "needs record_to (the recorder's address)",
            ));
        }
        return Ok(None);
    };
    let destination: SocketAddr = to.parse().map_err(|_| {
        invalid(
            format!("{key}.record_to"),
            format!("{to:?} is not an IP address with a port, e.g. \"192.0.2.10:5004\""),
        )
    })?;
    if destination.port() == 0
        || destination.ip().is_unspecified()
        || destination.ip().is_multicast()
    {
        return Err(invalid(
            format!("{key}.record_to"),
            "must be a unicast address with a non-zero port",
        ));
    }
    let legs = match m.record_legs.as_deref() {
        None => TapLegs::Both,
        Some(l) => l.parse().map_err(|_| {
            invalid(
                format!("{key}.record_legs"),
                format!("{l:?} must be \"both\", \"caller\" or \"callee\""),
            )
        })?,
    };
    Ok(Some(TapSpec {
        legs,
        transport: TapTransport::Rtp,
        destination,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{files, LISTENER, TENANT};
    use crate::config::Config;
    use crate::tap::{TapLegs, TapSpec, TapTransport};

    #[test]
    fn media_freebind_needs_a_specific_address() {
        let f = files();
        let text = |media: &str| format!("{LISTENER}{TENANT}[media]\n{media}");
        let cfg = Config::from_toml_str(
            &text("address = \"10.77.0.100\"\nfreebind = true\n"),
            &f.dir,
        )
        .expect("valid");
        assert!(cfg.media.freebind);
        let cfg = Config::from_toml_str(&text(""), &f.dir).expect("valid");
        assert!(!cfg.media.freebind);
        let e = crate::config::test_support::err(
            &f,
            &text("address = \"0.0.0.0\"\nadvertised_address = \"192.0.2.1\"\nfreebind = true\n"),
        );
        assert!(
            e.contains("media.freebind") && e.contains("wildcard"),
            "{e}"
        );
    }

    #[test]
    fn record_to_makes_an_rtp_tap_spec() {
        let f = files();
        let text = format!(
            "{LISTENER}{TENANT}[tenants.media]\nrecord_to = \"[2001:db8::7]:5004\"\nrecord_legs = \"callee\"\n"
        );
        let cfg = Config::from_toml_str(&text, &f.dir).expect("valid");
        assert_eq!(
            cfg.tenants[0].media.record,
            Some(TapSpec {
                legs: TapLegs::Callee,
                transport: TapTransport::Rtp,
                destination: "[2001:db8::7]:5004".parse().expect("addr"),
            })
        );
        let text = format!("{LISTENER}{TENANT}[tenants.media]\nrecord_to = \"10.1.2.3:5004\"\n");
        let cfg = Config::from_toml_str(&text, &f.dir).expect("valid");
        assert_eq!(
            cfg.tenants[0].media.record.map(|s| s.legs),
            Some(TapLegs::Both)
        );
    }
}
