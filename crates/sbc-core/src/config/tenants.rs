//! `[[tenants]]`: who a tenant is (`id`), how its peers are recognised
//! (`[tenants.recognition]`) and its limits (`[tenants.limits]`); its routes, media policy
//! and header / body policy are validated by [`routes`](super::routes), [`media`](super::media)
//! and [`policy`](super::policy) and gathered here into one [`Tenant`].
//!
//! Owns: the raw tenant schema, [`Tenant`], [`Recognition`], [`Limits`], and the checks
//! across tenants (unique ids, no identity claimed twice). Must not: recognise a peer or
//! enforce a limit (`crate::tenant` and the admission code do).

use std::collections::HashMap;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use super::media::{validate_tenant_media, RawTenantMedia};
use super::policy::{
    validate_bodies, validate_headers, BodySettings, HeaderSettings, RawBodies, RawHeaders,
};
use super::recording::{validate_recording, RawRecording, RecordingSettings};
use super::{invalid, parse_net, routes, ConfigError, RawRoute, Route};
use crate::media::MediaPolicy;
use crate::redact::Redaction;
use crate::tenant::TenantId;

/// Largest tenant id, so ids stay usable as metric labels and log fields.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// How a tenant's peers are recognised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recognition {
    pub client_cert_san: Vec<String>,
    pub client_cert_sha256: Vec<[u8; 32]>,
    pub sni: Vec<String>,
    pub source_cidrs: Vec<IpNet>,
}

/// A tenant's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// New calls per second, long-run average (token bucket rate).
    pub calls_per_second: f64,
    /// New calls admitted back to back (token bucket depth).
    pub call_burst: u32,
    /// Calls in progress (ringing or answered) at once.
    pub max_concurrent_calls: u32,
    /// Calls in setup (INVITE sent on, no final answer yet) at once.
    pub max_pending_invites: u32,
    /// Requests per second one connection of this tenant may send (burst: one second's
    /// worth); past it new dialogs get 503. ACK, BYE and CANCEL are never refused.
    pub requests_per_second_per_connection: f64,
    /// Media streams relayed at once (0: no limit).
    pub max_media_streams: u32,
    /// Media bandwidth in kbit/s, enforced in the relay (0: no limit).
    pub media_bandwidth_kbps: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            calls_per_second: 10.0,
            call_burst: 20,
            max_concurrent_calls: 100,
            max_pending_invites: 50,
            requests_per_second_per_connection: 200.0,
            max_media_streams: 0,
            media_bandwidth_kbps: 0,
        }
    }
}

/// A tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    pub recognition: Recognition,
    pub routes: Vec<Route>,
    pub limits: Limits,
    /// SRTP policy and allowed suites per leg.
    pub media: MediaPolicy,
    /// Which headers cross the B2BUA, per direction (`[tenants.headers]`).
    pub headers: HeaderSettings,
    /// Which body types cross besides SDP (`[tenants.bodies]`).
    pub bodies: BodySettings,
    /// SIPREC recording of the tenant's calls (`[tenants.recording]`), if configured.
    pub recording: Option<RecordingSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    id: String,
    #[serde(default)]
    recognition: RawRecognition,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    media: RawTenantMedia,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    bodies: RawBodies,
    #[serde(default)]
    recording: Option<RawRecording>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRecognition {
    client_cert_san: Vec<String>,
    client_cert_sha256: Vec<String>,
    sni: Vec<String>,
    source_cidrs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    calls_per_second: f64,
    call_burst: u32,
    max_concurrent_calls: u32,
    max_pending_invites: u32,
    requests_per_second_per_connection: f64,
    max_media_streams: u32,
    media_bandwidth_kbps: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        let d = Limits::default();
        RawLimits {
            calls_per_second: d.calls_per_second,
            call_burst: d.call_burst,
            max_concurrent_calls: d.max_concurrent_calls,
            max_pending_invites: d.max_pending_invites,
            requests_per_second_per_connection: d.requests_per_second_per_connection,
            max_media_streams: d.max_media_streams,
            media_bandwidth_kbps: d.media_bandwidth_kbps,
        }
    }
}

fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TENANT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn validate_tenant(
    t: &RawTenant,
    key: &str,
    base: &Path,
    logs: Redaction,
) -> Result<Tenant, ConfigError> {
    if !valid_tenant_id(&t.id) {
        return Err(invalid(
            format!("{key}.id"),
            format!("{:?} must be 1 to {MAX_TENANT_ID_LEN} of [a-z0-9_-]", t.id),
        ));
    }
    let r = &t.recognition;
    let rkey = format!("{key}.recognition");
    if r.client_cert_san.is_empty()
        && r.client_cert_sha256.is_empty()
        && r.sni.is_empty()
        && r.source_cidrs.is_empty()
    {
        return Err(invalid(
            rkey,
            "at least one of client_cert_san, client_cert_sha256, sni, source_cidrs is required",
        ));
    }
    for (i, s) in r.client_cert_san.iter().chain(&r.sni).enumerate() {
        if s.is_empty() || s.contains(char::is_whitespace) {
            let field = if i < r.client_cert_san.len() {
                "client_cert_san"
            } else {
                "sni"
            };
            return Err(invalid(
                format!("{rkey}.{field}"),
                format!("{s:?} is not a name"),
            ));
        }
    }
    let mut fingerprints = Vec::new();
    for (i, f) in r.client_cert_sha256.iter().enumerate() {
        let clean: String = f.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&clean)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        match bytes {
            Some(b) => fingerprints.push(b),
            None => {
                return Err(invalid(
                    format!("{rkey}.client_cert_sha256[{i}]"),
                    "must be 32 bytes of hex (colons allowed)",
                ))
            }
        }
    }
    let mut cidrs = Vec::new();
    for (i, c) in r.source_cidrs.iter().enumerate() {
        let net = parse_net(c).ok_or_else(|| {
            invalid(
                format!("{rkey}.source_cidrs[{i}]"),
                format!("{c:?} is not an address or CIDR"),
            )
        })?;
        cidrs.push(net);
    }
    let routes = routes::validate_routes(&t.routes, key, base)?;
    let l = &t.limits;
    let lkey = format!("{key}.limits");
    if !(l.calls_per_second.is_finite() && l.calls_per_second > 0.0 && l.calls_per_second <= 1e6) {
        return Err(invalid(
            format!("{lkey}.calls_per_second"),
            "must be above 0 and at most 1000000",
        ));
    }
    if !(1..=1_000_000).contains(&l.call_burst) {
        return Err(invalid(
            format!("{lkey}.call_burst"),
            "must be between 1 and 1000000",
        ));
    }
    if !(1..=1_000_000).contains(&l.max_concurrent_calls) {
        return Err(invalid(
            format!("{lkey}.max_concurrent_calls"),
            "must be between 1 and 1000000",
        ));
    }
    if !(1..=1_000_000).contains(&l.max_pending_invites) {
        return Err(invalid(
            format!("{lkey}.max_pending_invites"),
            "must be between 1 and 1000000",
        ));
    }
    if l.max_media_streams > 1_000_000 {
        return Err(invalid(
            format!("{lkey}.max_media_streams"),
            "must be at most 1000000 (0: no limit)",
        ));
    }
    if l.media_bandwidth_kbps > 100_000_000 {
        return Err(invalid(
            format!("{lkey}.media_bandwidth_kbps"),
            "must be at most 100000000 (0: no limit)",
        ));
    }
    let rps = l.requests_per_second_per_connection;
    if !(rps.is_finite() && (1.0..=1e6).contains(&rps)) {
        return Err(invalid(
            format!("{lkey}.requests_per_second_per_connection"),
            "must be between 1 and 1000000",
        ));
    }
    let mut media = validate_tenant_media(&t.media, &format!("{key}.media"))?;
    media.max_streams = l.max_media_streams;
    media.bandwidth_kbps = l.media_bandwidth_kbps;
    let recording = t
        .recording
        .as_ref()
        .map(|r| validate_recording(r, &format!("{key}.recording"), base, logs))
        .transpose()?;
    Ok(Tenant {
        media,
        recording,
        headers: validate_headers(&t.headers, &format!("{key}.headers"), &t.id)?,
        bodies: validate_bodies(&t.bodies, &format!("{key}.bodies"), &t.id)?,
        id: TenantId::from(t.id.as_str()),
        recognition: Recognition {
            client_cert_san: r.client_cert_san.clone(),
            client_cert_sha256: fingerprints,
            sni: r.sni.clone(),
            source_cidrs: cidrs,
        },
        routes,
        limits: Limits {
            calls_per_second: l.calls_per_second,
            call_burst: l.call_burst,
            max_concurrent_calls: l.max_concurrent_calls,
            max_pending_invites: l.max_pending_invites,
            requests_per_second_per_connection: rps,
            max_media_streams: l.max_media_streams,
            media_bandwidth_kbps: l.media_bandwidth_kbps,
        },
    })
}

/// Every `[[tenants]]`: each valid, ids unique, and no identity claimed by two tenants.
/// `logs` is `logging.redact_numbers`, which recording metadata follows by default.
pub(super) fn validate_tenants(
    raw: &[RawTenant],
    base: &Path,
    logs: Redaction,
) -> Result<Vec<Tenant>, ConfigError> {
    let mut tenants = Vec::new();
    let mut ids = HashMap::new();
    let mut claims: HashMap<String, usize> = HashMap::new();
    for (i, t) in raw.iter().enumerate() {
        let key = format!("tenants[{i}]");
        let tenant = validate_tenant(t, &key, base, logs)?;
        if let Some(j) = ids.insert(t.id.clone(), i) {
            return Err(invalid(
                format!("{key}.id"),
                format!("{:?} is also the id of tenants[{j}]", t.id),
            ));
        }
        // No identity may be claimed by two tenants: recognition must be unambiguous.
        let r = &tenant.recognition;
        let identities = r
            .client_cert_san
            .iter()
            .map(|s| ("client_cert_san", format!("san:{}", s.to_ascii_lowercase())))
            .chain(
                r.client_cert_sha256
                    .iter()
                    .map(|f| ("client_cert_sha256", format!("sha256:{}", hex::encode(f)))),
            )
            .chain(
                r.sni
                    .iter()
                    .map(|s| ("sni", format!("sni:{}", s.to_ascii_lowercase()))),
            )
            .chain(
                r.source_cidrs
                    .iter()
                    .map(|n| ("source_cidrs", format!("cidr:{n}"))),
            );
        for (field, claim) in identities {
            if let Some(j) = claims.insert(claim.clone(), i) {
                if j != i {
                    return Err(invalid(
                        format!("{key}.recognition.{field}"),
                        format!(
                            "{} is also claimed by tenants[{j}]; recognition must be unambiguous",
                            claim.split_once(':').map(|(_, v)| v).unwrap_or(&claim)
                        ),
                    ));
                }
            }
        }
        tenants.push(tenant);
    }
    Ok(tenants)
}
