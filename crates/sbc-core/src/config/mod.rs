//! The configuration schema, its validation, and the embedded default.
//!
//! One TOML file; unknown keys are errors (fail closed). Validation turns the raw file into
//! a typed [`Config`] whose certificates, keys and CA files have been read, so a config
//! that validates can be started. Every error names the key it is about.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::flood::{FloodAction, FloodSettings};
use crate::media::{LegPolicy, LegSide, MediaPolicy, SrtpMode};
use crate::redact::Redaction;
use crate::tap::{TapLegs, TapSpec, TapTransport};
use crate::tenant::TenantId;

mod routes;
use routes::RawRoute;
pub use routes::{
    Failover, HealthSettings, Route, RouteTarget, DEFAULT_FAILOVER_ON, DEFAULT_TRY_TIMEOUT,
    MAX_FAILOVER_CODES, MAX_TARGETS_PER_ROUTE,
};
pub mod certs;
mod dns;
pub use dns::DnsSettings;
pub mod cluster;
pub use cluster::{ClusterSettings, RedisEndpoint};
mod transport;
pub use transport::{parse_target, TargetUri, Transport, SIPS_DEFAULT_PORT, SIP_DEFAULT_PORT};

/// Most per-source entries the flood guard may be configured to track.
pub const MAX_TRACKED_SOURCES: usize = 10_000_000;
/// Capacity of the queue in front of the SIP core (see `sbc-sip`'s server).
pub const CORE_QUEUE_CAPACITY: usize = 8192;

/// Smallest accepted `sip.max_message_bytes`: an INVITE with a modest SDP needs ~1 KiB.
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest accepted `sip.max_message_bytes`: one message buffer per connection is this big.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Largest tenant id, so ids stay usable as metric labels and log fields.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (unknown key, wrong type).
    #[error("{0}")]
    Syntax(String),
    /// A value is out of range or inconsistent; `key` is its path, e.g. `tenants[1].id`.
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// SIP transport and transaction settings.
#[derive(Debug, Clone)]
pub struct SipSettings {
    /// Largest SIP message (headers + body) accepted on a connection.
    pub max_message_bytes: usize,
    /// Most header lines one message may carry.
    pub max_headers: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// RFC 3261 T1; timers B, F and H are 64·T1.
    pub t1: Duration,
    /// Longest an INVITE may ring before it is cancelled (408 upstream).
    pub max_ringing: Duration,
    /// Max-Forwards for requests that arrive without one.
    pub max_forwards: u32,
    /// Longest a stream connection may take from the first byte of a message to its last
    /// (head and body); past it the connection is closed (slowloris).
    pub message_timeout: Duration,
    /// Most connections of one source IP that may hold an incomplete message at once;
    /// the one that would exceed it is closed.
    pub max_partial_connections_per_source: u32,
    /// On SIGTERM, how long running calls may go on before the gateway stops anyway
    /// (`sip.drain_deadline_secs`; 0: stop at once).
    pub drain_deadline: Duration,
    /// How often certificate, key and CA files are read again to pick up a change
    /// (`sip.cert_poll_secs`; `None`: only on SIGHUP). See [`certs`].
    pub cert_poll: Option<Duration>,
    /// Resolution of route targets given by name (`sip.dns_servers`, `sip.dns_timeout_ms`).
    pub dns: DnsSettings,
}

/// A PEM private key. Zeroized on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct PrivateKeyPem(Zeroizing<Vec<u8>>);

impl PrivateKeyPem {
    /// Wraps the PEM text of a key made in code (the embedded default's).
    pub fn new(pem: Zeroizing<Vec<u8>>) -> PrivateKeyPem {
        PrivateKeyPem(pem)
    }

    /// The PEM text.
    pub fn pem(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A SIP listener: TLS (the default), or plain TCP or UDP for inside networks.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// `transport`: TLS, or plain TCP / UDP (whose TLS fields below are empty).
    pub transport: Transport,
    /// Host written into Via, Contact and Record-Route (default: the bound address).
    pub advertised_host: Option<String>,
    /// Where the certificate came from (`None` for the embedded default).
    pub certificate_path: Option<PathBuf>,
    /// PEM chain, leaf first.
    pub certificate_pem: Vec<u8>,
    /// Where the private key came from (`None` for the embedded default).
    pub private_key_path: Option<PathBuf>,
    pub private_key: PrivateKeyPem,
    /// Where the client CA bundle came from.
    pub client_ca_path: Option<PathBuf>,
    /// CA bundle that client certificates are verified against (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
    /// Refuse handshakes without a valid client certificate.
    pub require_client_cert: bool,
}

impl Listener {
    /// When the leaf certificate expires (`None` if it cannot be read, which validation
    /// has already ruled out for configured files).
    pub fn certificate_not_after(&self) -> Option<std::time::SystemTime> {
        let der = CertificateDer::pem_slice_iter(&self.certificate_pem)
            .next()?
            .ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let secs = cert.validity().not_after.timestamp();
        let secs = u64::try_from(secs).ok()?;
        Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    }
}

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
}

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
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `[admin]` section as written (`sbc-admin` validates it), and the directory its
    /// relative paths resolve from.
    pub admin_section: Option<toml::Value>,
    pub base_dir: PathBuf,
    pub logging: LoggingSettings,
    pub media: MediaSettings,
    pub sip: SipSettings,
    pub listeners: Vec<Listener>,
    pub tenants: Vec<Tenant>,
    pub flood_guard: FloodSettings,
    pub overload: OverloadSettings,
    /// `[cluster]`: quotas shared with other gateways through Redis; `None`: this node alone.
    pub cluster: Option<ClusterSettings>,
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    media: RawMedia,
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    /// The admin plane's section: validated by `sbc-admin`, kept here as written.
    admin: Option<toml::Value>,
    #[serde(default)]
    flood_guard: RawFlood,
    #[serde(default)]
    overload: RawOverload,
    cluster: Option<cluster::RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMedia {
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
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTenantMedia {
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    level: Option<String>,
    format: Option<String>,
    redact_numbers: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFlood {
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
struct RawOverload {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSip {
    max_message_bytes: usize,
    max_headers: usize,
    idle_timeout_secs: u64,
    t1_ms: u64,
    max_ringing_secs: u64,
    max_forwards: u32,
    message_timeout_ms: u64,
    max_partial_connections_per_source: u32,
    drain_deadline_secs: u64,
    cert_poll_secs: u64,
    dns_timeout_ms: u64,
    dns_servers: Vec<String>,
}

/// Default `sip.message_timeout_ms`. A peer writes a message at once, so it normally
/// arrives within a round trip; TCP's initial retransmission timeout is 1 s (RFC 6298), so
/// three lost segments in a row back off 1 + 2 + 4 = 7 s. 10 s covers that on a bad path
/// and still cuts a peer that dribbles a message (one byte a second) within seconds.
const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 10_000;

/// Default `sip.max_partial_connections_per_source`. A trunk holds a message incomplete
/// for about a round trip, and rarely on more than one or two connections at the same
/// instant; 8 leaves room for that while bounding what one slow source can pin to
/// 8 × `max_message_bytes` (512 KiB at the default) of buffers.
const DEFAULT_MAX_PARTIAL_CONNECTIONS_PER_SOURCE: u32 = 8;

/// Default `sip.drain_deadline_secs`: most calls a drain waits for are short ones in
/// setup or ending; 30 s lets those finish and fits inside systemd's default stop timeout
/// (90 s) with room for the rest of the shutdown.
const DEFAULT_DRAIN_DEADLINE_SECS: u64 = 30;

/// Longest `sip.drain_deadline_secs`: a day, past which a "drain" is an outage of the
/// process manager's stop, not a drain.
const MAX_DRAIN_DEADLINE_SECS: u64 = 86_400;

impl Default for RawSip {
    fn default() -> Self {
        RawSip {
            max_message_bytes: 65536,
            max_headers: 100,
            idle_timeout_secs: 600,
            t1_ms: 500,
            max_ringing_secs: 180,
            max_forwards: 70,
            message_timeout_ms: DEFAULT_MESSAGE_TIMEOUT_MS,
            max_partial_connections_per_source: DEFAULT_MAX_PARTIAL_CONNECTIONS_PER_SOURCE,
            drain_deadline_secs: DEFAULT_DRAIN_DEADLINE_SECS,
            cert_poll_secs: certs::DEFAULT_CERT_POLL_SECS,
            dns_timeout_ms: dns::DEFAULT_DNS_TIMEOUT_MS,
            dns_servers: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    address: String,
    advertised_host: Option<String>,
    #[serde(default)]
    transport: Transport,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    require_client_cert: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    #[serde(default)]
    recognition: RawRecognition,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    media: RawTenantMedia,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    bodies: RawBodies,
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

impl Config {
    /// Read and validate a file. Relative paths in it are resolved from its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml_str(&text, base)
    }

    /// Validate a config text; relative paths are resolved from `base`.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim().to_string()))?;
        if raw.listeners.is_empty() {
            return Err(invalid(
                "listeners",
                "at least one [[listeners]] is required",
            ));
        }
        validate(&raw, base)
    }

    /// The demo default: SIP over TLS on 127.0.0.1:5061 with a self-signed certificate made
    /// now, one tenant `demo` recognised by source 127.0.0.0/8 and routed to
    /// sips:127.0.0.1:5062.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        let (cert, key) = self_signed(&["localhost".to_string(), "127.0.0.1".to_string()])?;
        let raw: RawConfig = toml::from_str(EMBEDDED_DEFAULT_WITHOUT_LISTENER)
            .map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut cfg = validate(&raw, Path::new("."))?;
        cfg.listeners = vec![Listener {
            name: "default".to_string(),
            address: SocketAddr::from(([127, 0, 0, 1], 5061)),
            transport: Transport::Tls,
            advertised_host: None,
            certificate_path: None,
            certificate_pem: cert.into_bytes(),
            private_key_path: None,
            private_key: PrivateKeyPem(Zeroizing::new(key.into_bytes())),
            client_ca_path: None,
            client_ca_pem: None,
            require_client_cert: false,
        }];
        Ok(cfg)
    }

    /// A human-readable summary: listeners, tenants, routes and limits. Holds no secret.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sip: max_message_bytes={} max_headers={} idle_timeout={}s t1={}ms max_ringing={}s message_timeout={}ms max_partial_connections_per_source={} drain_deadline={}s",
            self.sip.max_message_bytes,
            self.sip.max_headers,
            self.sip.idle_timeout.as_secs(),
            self.sip.t1.as_millis(),
            self.sip.max_ringing.as_secs(),
            self.sip.message_timeout.as_millis(),
            self.sip.max_partial_connections_per_source,
            self.sip.drain_deadline.as_secs()
        );
        for l in &self.listeners {
            if l.transport != Transport::Tls {
                let _ = writeln!(
                    s,
                    "listener {:?}: {} transport={} (plain: inside networks only)",
                    l.name, l.address, l.transport
                );
                continue;
            }
            let cert = l
                .certificate_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "made at start (no file)".to_string());
            let _ = writeln!(
                s,
                "listener {:?}: {} certificate={} mtls={}",
                l.name,
                l.address,
                cert,
                match (&l.client_ca_pem, l.require_client_cert) {
                    (None, _) => "off",
                    (Some(_), false) => "optional",
                    (Some(_), true) => "required",
                }
            );
        }
        for t in &self.tenants {
            let r = &t.recognition;
            let _ = writeln!(
                s,
                "tenant {}: recognised by {} SAN, {} fingerprint, {} SNI, {} CIDR; limits {} calls/s (burst {}), {} concurrent",
                t.id,
                r.client_cert_san.len(),
                r.client_cert_sha256.len(),
                r.sni.len(),
                r.source_cidrs.len(),
                t.limits.calls_per_second,
                t.limits.call_burst,
                t.limits.max_concurrent_calls
            );
            for route in &t.routes {
                let prefix = if route.prefix.is_empty() {
                    "*"
                } else {
                    &route.prefix
                };
                let targets: Vec<String> = route
                    .targets
                    .iter()
                    .map(|t| format!("{} (priority {}, weight {})", t.uri, t.priority, t.weight))
                    .collect();
                let health = if route.health.is_some() { "on" } else { "off" };
                let _ = writeln!(
                    s,
                    "  route {prefix} -> {}; health checks {health}",
                    targets.join(", ")
                );
            }
        }
        s.trim_end().to_string()
    }
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

fn validate_logging(l: &RawLogging) -> Result<LoggingSettings, ConfigError> {
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

fn validate_media(m: &RawMedia) -> Result<MediaSettings, ConfigError> {
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
    Ok(MediaSettings {
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

fn validate_tenant_media(m: &RawTenantMedia, key: &str) -> Result<MediaPolicy, ConfigError> {
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

// ---- what crosses the B2BUA: `[tenants.headers]` and `[tenants.bodies]` ----

/// Headers the B2BUA builds for each leg itself (lower case, long forms). They never
/// cross from one leg to the other, and config can neither pass, strip nor add them:
/// sbc-sip's `b2bua::topology` enforces the same list.
pub const B2BUA_OWNED_HEADERS: [&str; 16] = [
    "via",
    "route",
    "record-route",
    "contact",
    "call-id",
    "from",
    "to",
    "cseq",
    "max-forwards",
    "content-length",
    "content-type",
    // A body that crosses is rebuilt unencoded; an encoded one is refused (415).
    "content-encoding",
    "rseq",
    "rack",
    "path",
    "service-route",
];

/// Headers whose crossing is decided by a dedicated rule, not by `pass` / `strip` /
/// `add`: (header, what governs it).
pub const GOVERNED_HEADERS: [(&str, &str); 4] = [
    (
        "p-asserted-identity",
        "set trust_caller_identity / trust_callee_identity (RFC 3325)",
    ),
    (
        "privacy",
        "it always crosses: it is the user's privacy request (RFC 3323)",
    ),
    ("user-agent", "set user_agent"),
    ("server", "set user_agent"),
];

/// Most names in one `pass`, `strip` or `add` list: policies are audited by reading them,
/// and a few dozen already covers every trunk we know of.
pub const MAX_HEADER_RULES: usize = 64;
/// Longest configured header value (`user_agent`, `add`): a product token or a tag,
/// well under a message's size bound.
pub const MAX_CONFIGURED_HEADER_VALUE: usize = 256;
/// Most extra body types a tenant may allow: each is a MIME type an application needs
/// (PIDF-LO, ISUP, DTMF relay, ...), not an open list.
pub const MAX_ALLOWED_BODY_TYPES: usize = 16;

/// Header rules for messages travelling in one direction (toward one leg).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Headers that cross in addition to the defaults (lower case, long forms).
    pub pass: Vec<String>,
    /// Headers that do not cross even though the defaults would pass them (lower case).
    pub strip: Vec<String>,
    /// Fixed headers added to every message (name as written, value), sorted by name.
    /// A header named here replaces a crossing one of the same name.
    pub add: Vec<(String, String)>,
}

/// A tenant's header policy as configured (`[tenants.headers]`). The defaults (every
/// field at its `Default`) are the topology-hiding defaults of `sbc_sip::b2bua::topology`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSettings {
    /// P-Asserted-Identity from the caller side (the tenant's platform) is trusted and
    /// passes (RFC 3325 §4 trust domain).
    pub trust_caller_identity: bool,
    /// P-Asserted-Identity from the callee side (the tenant's route target) is trusted.
    pub trust_callee_identity: bool,
    /// Value written as User-Agent (requests) / Server (responses); `None`: removed.
    pub user_agent: Option<String>,
    /// Messages travelling toward the callee (the route target).
    pub to_callee: HeaderRules,
    /// Messages travelling toward the caller (the platform).
    pub to_caller: HeaderRules,
}

impl HeaderSettings {
    /// The rules for messages travelling toward `side`.
    pub fn rules(&self, toward: LegSide) -> &HeaderRules {
        match toward {
            LegSide::Callee => &self.to_callee,
            LegSide::Caller => &self.to_caller,
        }
    }

    /// Whether P-Asserted-Identity coming from `side` is trusted.
    pub fn trusts(&self, side: LegSide) -> bool {
        match side {
            LegSide::Caller => self.trust_caller_identity,
            LegSide::Callee => self.trust_callee_identity,
        }
    }
}

/// A tenant's body policy as configured (`[tenants.bodies]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodySettings {
    /// MIME types (lower case `type/subtype`) that cross besides `application/sdp`,
    /// alone or as parts of a `multipart/mixed` body.
    pub allow: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHeaders {
    trust_caller_identity: bool,
    trust_callee_identity: bool,
    user_agent: Option<String>,
    to_callee: RawHeaderRules,
    to_caller: RawHeaderRules,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHeaderRules {
    pass: Vec<String>,
    strip: Vec<String>,
    add: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawBodies {
    allow: Vec<String>,
}

/// RFC 3261 §25.1 token characters.
fn is_sip_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// A configured header name, lower case; refused if it is not a token, a compact form,
/// owned by the B2BUA, or governed by another key.
fn header_name(name: &str, key: &str, tenant: &str) -> Result<String, ConfigError> {
    if !is_sip_token(name) {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: {name:?} is not a header name"),
        ));
    }
    if name.len() == 1 {
        return Err(invalid(
            key,
            format!(
                "tenant {tenant:?}: {name:?} is a compact form (RFC 3261 §7.3.3); write the full header name"
            ),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if B2BUA_OWNED_HEADERS.contains(&lower.as_str()) {
        return Err(invalid(
            key,
            format!(
                "tenant {tenant:?}: {name} is built by the B2BUA for each leg and can never be configured to cross"
            ),
        ));
    }
    if let Some((_, by)) = GOVERNED_HEADERS.iter().find(|(h, _)| *h == lower) {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: {name} is not configurable here: {by}"),
        ));
    }
    Ok(lower)
}

/// A configured header value: not empty, bounded, no control characters (CR/LF would
/// inject header lines).
fn header_value(value: &str, key: &str, tenant: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_CONFIGURED_HEADER_VALUE {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: must be 1 to {MAX_CONFIGURED_HEADER_VALUE} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(
            key,
            format!("tenant {tenant:?}: must not contain CR, LF or other control characters"),
        ));
    }
    Ok(value.to_string())
}

fn validate_header_rules(
    r: &RawHeaderRules,
    key: &str,
    tenant: &str,
) -> Result<HeaderRules, ConfigError> {
    for (field, len) in [
        ("pass", r.pass.len()),
        ("strip", r.strip.len()),
        ("add", r.add.len()),
    ] {
        if len > MAX_HEADER_RULES {
            return Err(invalid(
                format!("{key}.{field}"),
                format!("tenant {tenant:?}: at most {MAX_HEADER_RULES} headers"),
            ));
        }
    }
    let mut rules = HeaderRules::default();
    for (field, list) in [("pass", &r.pass), ("strip", &r.strip)] {
        for (i, name) in list.iter().enumerate() {
            let k = format!("{key}.{field}[{i}]");
            let lower = header_name(name, &k, tenant)?;
            if rules.pass.contains(&lower) || rules.strip.contains(&lower) {
                return Err(invalid(
                    k,
                    format!("tenant {tenant:?}: {name} is listed twice in pass / strip"),
                ));
            }
            match field {
                "pass" => rules.pass.push(lower),
                _ => rules.strip.push(lower),
            }
        }
    }
    for (name, value) in &r.add {
        let k = format!("{key}.add.{name}");
        let lower = header_name(name, &k, tenant)?;
        if rules.strip.contains(&lower) {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {name} is both stripped and added"),
            ));
        }
        if rules.add.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {name} is added twice"),
            ));
        }
        rules
            .add
            .push((name.clone(), header_value(value, &k, tenant)?));
    }
    Ok(rules)
}

fn validate_headers(
    h: &RawHeaders,
    key: &str,
    tenant: &str,
) -> Result<HeaderSettings, ConfigError> {
    let user_agent = match &h.user_agent {
        Some(v) => Some(header_value(v, &format!("{key}.user_agent"), tenant)?),
        None => None,
    };
    Ok(HeaderSettings {
        trust_caller_identity: h.trust_caller_identity,
        trust_callee_identity: h.trust_callee_identity,
        user_agent,
        to_callee: validate_header_rules(&h.to_callee, &format!("{key}.to_callee"), tenant)?,
        to_caller: validate_header_rules(&h.to_caller, &format!("{key}.to_caller"), tenant)?,
    })
}

fn validate_bodies(b: &RawBodies, key: &str, tenant: &str) -> Result<BodySettings, ConfigError> {
    if b.allow.len() > MAX_ALLOWED_BODY_TYPES {
        return Err(invalid(
            format!("{key}.allow"),
            format!("tenant {tenant:?}: at most {MAX_ALLOWED_BODY_TYPES} types"),
        ));
    }
    let mut allow: Vec<String> = Vec::new();
    for (i, t) in b.allow.iter().enumerate() {
        let k = format!("{key}.allow[{i}]");
        let lower = t.trim().to_ascii_lowercase();
        let valid = lower
            .split_once('/')
            .is_some_and(|(ty, sub)| is_sip_token(ty) && is_sip_token(sub));
        if !valid {
            return Err(invalid(
                k,
                format!(
                    "tenant {tenant:?}: {t:?} is not a MIME type (type/subtype, no parameters)"
                ),
            ));
        }
        if lower == "application/sdp" {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: application/sdp always crosses (it is anchored); do not list it"),
            ));
        }
        if lower.starts_with("multipart/") {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {t} cannot be allowed: multipart/mixed is handled part by part, other multiparts and nesting are refused"),
            ));
        }
        if allow.contains(&lower) {
            return Err(invalid(
                k,
                format!("tenant {tenant:?}: {t} is listed twice"),
            ));
        }
        allow.push(lower);
    }
    Ok(BodySettings { allow })
}

fn validate(raw: &RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let logging = validate_logging(&raw.logging)?;
    let media = validate_media(&raw.media)?;
    let sip = validate_sip(&raw.sip)?;
    let mut listeners = Vec::new();
    let mut names = HashMap::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if let Some(j) = names.insert(l.name.clone(), i) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} is also the name of listeners[{j}]", l.name),
            ));
        }
        let listener = validate_listener(l, &key, base)?;
        if let Some(j) = listeners
            .iter()
            .position(|o: &Listener| transport::listeners_clash(o, &listener))
        {
            return Err(invalid(
                format!("{key}.address"),
                format!(
                    "listener {:?} ({}) and listener {:?} (listeners[{j}], {}) cannot both bind it",
                    listener.name, listener.address, listeners[j].name, listeners[j].address
                ),
            ));
        }
        listeners.push(listener);
    }
    let mut tenants = Vec::new();
    let mut ids = HashMap::new();
    let mut claims: HashMap<String, usize> = HashMap::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        let key = format!("tenants[{i}]");
        let tenant = validate_tenant(t, &key, base)?;
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
    transport::check_route_transports(&listeners, &tenants, &raw.tenants)?;
    Ok(Config {
        admin_section: raw.admin.clone(),
        base_dir: base.to_path_buf(),
        logging,
        media,
        sip,
        listeners,
        tenants,
        flood_guard: validate_flood(&raw.flood_guard)?,
        overload: validate_overload(&raw.overload)?,
        cluster: raw
            .cluster
            .as_ref()
            .map(cluster::validate_cluster)
            .transpose()?,
    })
}

fn validate_flood(f: &RawFlood) -> Result<FloodSettings, ConfigError> {
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

fn validate_overload(o: &RawOverload) -> Result<OverloadSettings, ConfigError> {
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

fn parse_net(c: &str) -> Option<IpNet> {
    c.parse::<IpNet>()
        .ok()
        .or_else(|| c.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// The embedded default's tenants and settings (its listener is made in code).
const EMBEDDED_DEFAULT_WITHOUT_LISTENER: &str = r#"
[[tenants]]
id = "demo"
[tenants.recognition]
source_cidrs = ["127.0.0.0/8", "::1/128"]
[[tenants.routes]]
prefix = ""
target = "sips:127.0.0.1:5062"
"#;

/// The embedded default as a starting file (`sbc-edge print-default-config`): the same
/// listener, tenant and route as [`Config::embedded_default`], the listener's certificate
/// and key read from the paths given (relative paths: from the file's directory).
pub fn default_config_file(certificate: &str, private_key: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        r#"# sbc-edge: a starting configuration, written by `sbc-edge print-default-config`.
# It is the embedded default (`cargo run --release` without --config) as a file; check it
# with `sbc-edge check-config FILE` and run it with `sbc-edge --config FILE`.
# Without --config the gateway also runs a demo answering endpoint behind the demo route
# and trusts it; a file does not: point the route at your trunk (and give its CA with
# `ca_file = "trunk-ca.pem"`). Every key is described in deploy/sbc-edge.example.toml.

[[listeners]]
name = "default"
address = "127.0.0.1:5061"
certificate = {cert}
private_key = {key}
{EMBEDDED_DEFAULT_WITHOUT_LISTENER}"#,
        cert = q(certificate),
        key = q(private_key),
    )
}

/// A self-signed certificate and key (PEM) for `names`.
pub fn self_signed(names: &[String]) -> Result<(String, String), ConfigError> {
    let key = rcgen::KeyPair::generate()
        .map_err(|e| invalid("listeners", format!("cannot generate a key: {e}")))?;
    let cert = rcgen::CertificateParams::new(names.to_vec())
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| invalid("listeners", format!("cannot make a certificate: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn validate_sip(raw: &RawSip) -> Result<SipSettings, ConfigError> {
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&raw.max_message_bytes) {
        return Err(invalid(
            "sip.max_message_bytes",
            format!("must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES}"),
        ));
    }
    if !(10..=1000).contains(&raw.max_headers) {
        return Err(invalid("sip.max_headers", "must be between 10 and 1000"));
    }
    if !(1..=86_400).contains(&raw.idle_timeout_secs) {
        return Err(invalid(
            "sip.idle_timeout_secs",
            "must be between 1 and 86400",
        ));
    }
    if !(1..=10_000).contains(&raw.t1_ms) {
        return Err(invalid("sip.t1_ms", "must be between 1 and 10000"));
    }
    if !(1..=3600).contains(&raw.max_ringing_secs) {
        return Err(invalid(
            "sip.max_ringing_secs",
            "must be between 1 and 3600",
        ));
    }
    if !(1..=255).contains(&raw.max_forwards) {
        return Err(invalid("sip.max_forwards", "must be between 1 and 255"));
    }
    if !(100..=300_000).contains(&raw.message_timeout_ms) {
        return Err(invalid(
            "sip.message_timeout_ms",
            "must be between 100 and 300000",
        ));
    }
    if !(1..=10_000).contains(&raw.max_partial_connections_per_source) {
        return Err(invalid(
            "sip.max_partial_connections_per_source",
            "must be between 1 and 10000",
        ));
    }
    if raw.drain_deadline_secs > MAX_DRAIN_DEADLINE_SECS {
        return Err(invalid(
            "sip.drain_deadline_secs",
            format!("must be between 0 and {MAX_DRAIN_DEADLINE_SECS}"),
        ));
    }
    Ok(SipSettings {
        max_message_bytes: raw.max_message_bytes,
        max_headers: raw.max_headers,
        idle_timeout: Duration::from_secs(raw.idle_timeout_secs),
        t1: Duration::from_millis(raw.t1_ms),
        max_ringing: Duration::from_secs(raw.max_ringing_secs),
        max_forwards: raw.max_forwards,
        message_timeout: Duration::from_millis(raw.message_timeout_ms),
        max_partial_connections_per_source: raw.max_partial_connections_per_source,
        drain_deadline: Duration::from_secs(raw.drain_deadline_secs),
        cert_poll: certs::poll_interval(raw.cert_poll_secs)?,
        dns: dns::validate(raw.dns_timeout_ms, &raw.dns_servers)?,
    })
}

fn read_file(key: &str, base: &Path, path: &Path) -> Result<(PathBuf, Vec<u8>), ConfigError> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    std::fs::read(&full)
        .map(|b| (full.clone(), b))
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", full.display())))
}

fn certificates(key: &str, path: &Path, pem: &[u8]) -> Result<(), ConfigError> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| invalid(key, format!("{}: bad PEM certificate: {e}", path.display())))?;
        n += 1;
    }
    if n == 0 {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    Ok(())
}

fn validate_listener(l: &RawListener, key: &str, base: &Path) -> Result<Listener, ConfigError> {
    if l.name.is_empty() || l.name.len() > 64 {
        return Err(invalid(format!("{key}.name"), "must be 1 to 64 characters"));
    }
    let address: SocketAddr = l.address.parse().map_err(|_| {
        invalid(
            format!("{key}.address"),
            format!("{:?} is not an IP:port address", l.address),
        )
    })?;
    if let Some(h) = &l.advertised_host {
        if h.is_empty()
            || h.contains(|c: char| c.is_whitespace() || c == ';' || c == ',' || c == '>')
        {
            return Err(invalid(
                format!("{key}.advertised_host"),
                format!("{h:?} is not a host name or address"),
            ));
        }
    }
    let Some((cert_file, key_file)) = transport::listener_tls_paths(l, key)? else {
        return Ok(Listener {
            name: l.name.clone(),
            address,
            transport: l.transport,
            advertised_host: l.advertised_host.clone(),
            certificate_path: None,
            certificate_pem: Vec::new(),
            private_key_path: None,
            private_key: PrivateKeyPem(Zeroizing::new(Vec::new())),
            client_ca_path: None,
            client_ca_pem: None,
            require_client_cert: false,
        });
    };
    let (cert_path, certificate_pem) = read_file(&format!("{key}.certificate"), base, cert_file)?;
    certificates(&format!("{key}.certificate"), &cert_path, &certificate_pem)?;
    let (key_path, key_pem) = read_file(&format!("{key}.private_key"), base, key_file)?;
    let key_pem = Zeroizing::new(key_pem);
    if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
        return Err(invalid(
            format!("{key}.private_key"),
            format!("{}: no PEM private key in the file", key_path.display()),
        ));
    }
    let (client_ca_path, client_ca_pem) = match &l.client_ca {
        Some(p) => {
            let (path, pem) = read_file(&format!("{key}.client_ca"), base, p)?;
            certificates(&format!("{key}.client_ca"), &path, &pem)?;
            (Some(path), Some(pem))
        }
        None => (None, None),
    };
    if l.require_client_cert && client_ca_pem.is_none() {
        return Err(invalid(
            format!("{key}.require_client_cert"),
            "needs `client_ca` to verify client certificates against",
        ));
    }
    Ok(Listener {
        name: l.name.clone(),
        address,
        transport: Transport::Tls,
        advertised_host: l.advertised_host.clone(),
        certificate_path: Some(cert_path),
        certificate_pem,
        private_key_path: Some(key_path),
        private_key: PrivateKeyPem(key_pem),
        client_ca_path,
        client_ca_pem,
        require_client_cert: l.require_client_cert,
    })
}

fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TENANT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn validate_tenant(t: &RawTenant, key: &str, base: &Path) -> Result<Tenant, ConfigError> {
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
    Ok(Tenant {
        media,
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
    }

    fn files() -> Files {
        let dir = std::env::temp_dir().join(format!(
            "sbc-core-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = self_signed(&["localhost".into()]).expect("cert");
        std::fs::write(dir.join("cert.pem"), &cert).expect("w");
        std::fs::write(dir.join("key.pem"), key).expect("w");
        std::fs::write(dir.join("ca.pem"), cert).expect("w");
        std::fs::write(dir.join("junk.pem"), "not pem").expect("w");
        Files { dir }
    }

    const LISTENER: &str = "[[listeners]]\nname=\"l\"\naddress=\"127.0.0.1:5061\"\ncertificate=\"cert.pem\"\nprivate_key=\"key.pem\"\n";
    const TENANT: &str = "[[tenants]]\nid=\"t1\"\n[tenants.recognition]\nsource_cidrs=[\"10.0.0.0/8\"]\n[[tenants.routes]]\nprefix=\"\"\ntarget=\"sips:pbx.example\"\n";

    fn err(f: &Files, text: &str) -> String {
        match Config::from_toml_str(text, &f.dir) {
            Ok(_) => panic!("config accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_config_and_defaults() {
        let f = files();
        let cfg = Config::from_toml_str(&format!("{LISTENER}{TENANT}"), &f.dir).expect("valid");
        assert_eq!(cfg.sip.max_message_bytes, 65536);
        assert_eq!(cfg.sip.t1, Duration::from_millis(500));
        assert_eq!(cfg.sip.message_timeout, Duration::from_secs(10));
        assert_eq!(cfg.sip.max_partial_connections_per_source, 8);
        assert_eq!(
            cfg.tenants[0].routes[0].targets[0].uri,
            TargetUri {
                transport: Transport::Tls,
                host: "pbx.example".into(),
                port: 5061,
                port_explicit: false,
            }
        );
        assert_eq!(cfg.tenants[0].limits, Limits::default());
        let dbg = format!("{:?}", cfg.listeners[0]);
        assert!(
            dbg.contains("<redacted>") && !dbg.contains("PRIVATE KEY"),
            "{dbg}"
        );
        assert!(cfg.summary().contains("tenant t1"));
        assert_eq!(cfg.tenants[0].media.record, None);
    }

    #[test]
    fn drain_deadline_defaults_to_30s_and_is_bounded() {
        let f = files();
        let cfg = Config::from_toml_str(&format!("{LISTENER}{TENANT}"), &f.dir).expect("valid");
        assert_eq!(cfg.sip.drain_deadline, Duration::from_secs(30));
        let text = format!("[sip]\ndrain_deadline_secs = 0\n{LISTENER}{TENANT}");
        let cfg = Config::from_toml_str(&text, &f.dir).expect("valid");
        assert_eq!(cfg.sip.drain_deadline, Duration::ZERO);
        let e = err(
            &f,
            &format!("[sip]\ndrain_deadline_secs = 86401\n{LISTENER}{TENANT}"),
        );
        assert!(e.contains("sip.drain_deadline_secs"), "{e}");
    }

    #[test]
    fn two_listeners_on_one_address_are_refused_by_name() {
        let f = files();
        let second = |addr: &str| {
            format!("{LISTENER}[[listeners]]\nname=\"second\"\naddress=\"{addr}\"\ncertificate=\"cert.pem\"\nprivate_key=\"key.pem\"\n{TENANT}")
        };
        for clash in ["127.0.0.1:5061", "0.0.0.0:5061"] {
            let e = err(&f, &second(clash));
            assert!(
                e.contains("listeners[1].address")
                    && e.contains("\"second\"")
                    && e.contains("\"l\""),
                "{e}"
            );
        }
        for fine in ["127.0.0.1:5062", "127.0.0.2:5061", "[::1]:5061"] {
            Config::from_toml_str(&second(fine), &f.dir).expect(fine);
        }
        // Port 0: each bind gets its own port.
        let zero = LISTENER.replace("5061", "0");
        let text = format!(
            "{zero}{}",
            second("127.0.0.1:0").trim_start_matches(LISTENER)
        );
        Config::from_toml_str(&text, &f.dir).expect("two port-0 listeners");
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

    #[test]
    fn header_and_body_policy_config() {
        let f = files();
        let cfg = Config::from_toml_str(&format!("{LISTENER}{TENANT}"), &f.dir).expect("valid");
        assert_eq!(cfg.tenants[0].headers, HeaderSettings::default());
        assert_eq!(cfg.tenants[0].bodies, BodySettings::default());
        let text = format!(
            "{LISTENER}{TENANT}[tenants.headers]\ntrust_caller_identity = true\nuser_agent = \"sbc-edge\"\n\
             [tenants.headers.to_callee]\npass = [\"X-Account-Id\"]\nstrip = [\"Subject\"]\n\
             add = {{ \"X-Edge\" = \"edge-1\" }}\n[tenants.headers.to_caller]\npass = [\"Alert-Info\"]\n\
             [tenants.bodies]\nallow = [\"Application/PIDF+XML\"]\n"
        );
        let cfg = Config::from_toml_str(&text, &f.dir).expect("valid");
        let h = &cfg.tenants[0].headers;
        assert!(h.trusts(LegSide::Caller) && !h.trusts(LegSide::Callee));
        assert_eq!(h.user_agent.as_deref(), Some("sbc-edge"));
        assert_eq!(
            h.rules(LegSide::Callee),
            &HeaderRules {
                pass: vec!["x-account-id".into()],
                strip: vec!["subject".into()],
                add: vec![("X-Edge".into(), "edge-1".into())],
            }
        );
        assert_eq!(
            h.rules(LegSide::Caller).pass,
            vec!["alert-info".to_string()]
        );
        assert_eq!(
            cfg.tenants[0].bodies.allow,
            vec!["application/pidf+xml".to_string()]
        );
    }

    #[test]
    fn header_and_body_policy_errors_name_tenant_and_key() {
        let f = files();
        let cases: &[(&str, &str, &str)] = &[
            ("[tenants.headers]\nbogus = 1\n", "bogus", ""),
            ("[tenants.headers.to_callee]\nbogus = 1\n", "bogus", ""),
            ("[tenants.bodies]\nbogus = 1\n", "bogus", ""),
            (
                "[tenants.headers.to_callee]\npass = [\"Via\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "never be configured to cross",
            ),
            (
                "[tenants.headers.to_caller]\npass = [\"X-A\", \"Record-Route\"]\n",
                "tenants[0].headers.to_caller.pass[1]",
                "Record-Route",
            ),
            (
                "[tenants.headers.to_caller]\nstrip = [\"content-type\"]\n",
                "tenants[0].headers.to_caller.strip[0]",
                "B2BUA",
            ),
            (
                "[tenants.headers.to_callee]\nadd = { \"Call-ID\" = \"x\" }\n",
                "tenants[0].headers.to_callee.add.Call-ID",
                "B2BUA",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"i\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "compact form",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"X Bad\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "not a header name",
            ),
            (
                "[tenants.headers.to_callee]\nadd = { \"X-Edge\" = \"a\\r\\nVia: evil\" }\n",
                "tenants[0].headers.to_callee.add.X-Edge",
                "CR, LF",
            ),
            (
                "[tenants.headers]\nuser_agent = \"sbc\\nX: y\"\n",
                "tenants[0].headers.user_agent",
                "CR, LF",
            ),
            (
                "[tenants.headers]\nuser_agent = \"\"\n",
                "tenants[0].headers.user_agent",
                "1 to 256",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"P-Asserted-Identity\"]\n",
                "tenants[0].headers.to_callee.pass[0]",
                "trust_caller_identity",
            ),
            (
                "[tenants.headers.to_callee]\nadd = { \"User-Agent\" = \"x\" }\n",
                "tenants[0].headers.to_callee.add.User-Agent",
                "user_agent",
            ),
            (
                "[tenants.headers.to_callee]\npass = [\"X-A\"]\nstrip = [\"x-a\"]\n",
                "tenants[0].headers.to_callee.strip[0]",
                "twice",
            ),
            (
                "[tenants.headers.to_callee]\nstrip = [\"X-A\"]\nadd = { \"X-A\" = \"1\" }\n",
                "tenants[0].headers.to_callee.add.X-A",
                "stripped and added",
            ),
            (
                "[tenants.bodies]\nallow = [\"application/sdp\"]\n",
                "tenants[0].bodies.allow[0]",
                "always crosses",
            ),
            (
                "[tenants.bodies]\nallow = [\"multipart/related\"]\n",
                "tenants[0].bodies.allow[0]",
                "cannot be allowed",
            ),
            (
                "[tenants.bodies]\nallow = [\"pidf\"]\n",
                "tenants[0].bodies.allow[0]",
                "not a MIME type",
            ),
            (
                "[tenants.bodies]\nallow = [\"application/isup; version=itu-t92+\"]\n",
                "tenants[0].bodies.allow[0]",
                "not a MIME type",
            ),
        ];
        for (extra, key, message) in cases {
            let e = err(&f, &format!("{LISTENER}{TENANT}{extra}"));
            assert!(e.contains(key), "{extra:?}: {e}");
            assert!(e.contains(message), "{extra:?}: {e}");
            if !message.is_empty() {
                assert!(e.contains("tenant \"t1\""), "{extra:?}: {e}");
            }
        }
    }

    #[test]
    fn owned_headers_are_lower_case_long_forms() {
        for h in B2BUA_OWNED_HEADERS
            .iter()
            .chain(GOVERNED_HEADERS.iter().map(|(h, _)| h))
        {
            assert!(
                h.len() > 1 && is_sip_token(h) && *h == h.to_ascii_lowercase(),
                "{h}"
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        let f = files();
        let cases: &[(String, &str)] = &[
            (format!("{LISTENER}{TENANT}[sip]\nbogus = 1\n"), "bogus"),
            (
                format!("{LISTENER}{TENANT}[sip]\nmax_message_bytes = 10\n"),
                "sip.max_message_bytes",
            ),
            (
                format!("{LISTENER}{TENANT}[sip]\nmessage_timeout_ms = 50\n"),
                "sip.message_timeout_ms",
            ),
            (
                format!("{LISTENER}{TENANT}[sip]\nmax_partial_connections_per_source = 0\n"),
                "sip.max_partial_connections_per_source",
            ),
            (TENANT.to_string(), "listeners"),
            (
                LISTENER.replace("127.0.0.1:5061", "nowhere"),
                "listeners[0].address",
            ),
            (
                LISTENER.replace("key.pem", "missing.pem"),
                "listeners[0].private_key",
            ),
            (
                LISTENER.replace("cert.pem", "junk.pem"),
                "listeners[0].certificate",
            ),
            (
                format!("{LISTENER}require_client_cert=true\n"),
                "listeners[0].require_client_cert",
            ),
            (
                format!("{LISTENER}{}", TENANT.replace("t1", "Bad Id")),
                "tenants[0].id",
            ),
            (
                format!(
                    "{LISTENER}{}",
                    TENANT.replace("sips:pbx.example", "sip:pbx.example")
                ),
                "tenants[0].routes[0].target",
            ),
            (
                format!(
                    "{LISTENER}{}",
                    TENANT.replace("sips:pbx.example", "sips:[::1")
                ),
                "tenants[0].routes[0].target",
            ),
            (
                format!("{LISTENER}{}", TENANT.replace("10.0.0.0/8", "10.0.0.0/33")),
                "tenants[0].recognition.source_cidrs[0]",
            ),
            (
                format!(
                    "{LISTENER}{}",
                    TENANT.replace("source_cidrs=[\"10.0.0.0/8\"]", "")
                ),
                "tenants[0].recognition",
            ),
            (
                format!("{LISTENER}{TENANT}{}", TENANT.replace("t1", "t2")),
                "tenants[1].recognition.source_cidrs",
            ),
            (
                format!(
                    "{LISTENER}{TENANT}{}",
                    TENANT.replace("10.0.0.0/8", "11.0.0.0/8")
                ),
                "tenants[1].id",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.limits]\ncalls_per_second = 0.0\n"),
                "tenants[0].limits.calls_per_second",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.limits]\ncall_burst = 0\n"),
                "tenants[0].limits.call_burst",
            ),
            (
                format!("{LISTENER}{TENANT}ca_file=\"junk.pem\"\n"),
                "tenants[0].routes[0].ca_file",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.limits]\nmax_pending_invites = 0\n"),
                "tenants[0].limits.max_pending_invites",
            ),
            (
                format!("{LISTENER}{TENANT}[flood_guard]\naction = \"reject\"\n"),
                "flood_guard.action",
            ),
            (
                format!("{LISTENER}{TENANT}[flood_guard]\nallowlist = [\"x\"]\n"),
                "flood_guard.allowlist[0]",
            ),
            (
                format!("{LISTENER}{TENANT}[overload]\nmax_core_queue = 50000\n"),
                "overload.max_core_queue",
            ),
            (
                format!("{LISTENER}{TENANT}[logging]\nredact_numbers = \"yes\"\n"),
                "logging.redact_numbers",
            ),
            (
                format!("{LISTENER}{TENANT}[logging]\nformat = \"xml\"\n"),
                "logging.format",
            ),
            (
                format!("{LISTENER}{TENANT}[media]\nport_min = 20001\n"),
                "media.port_min",
            ),
            (
                format!("{LISTENER}{TENANT}[media]\nbatch_interval_us = 5001\n"),
                "media.batch_interval_us",
            ),
            (
                format!("{LISTENER}{TENANT}[media]\naddress = \"0.0.0.0\"\n"),
                "media.advertised_address",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.media]\ncaller_suites = [\"AES_CM_128_HMAC_SHA1_81\"]\n"),
                "tenants[0].media.caller_suites[0]",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.media]\ncallee_srtp = \"maybe\"\n"),
                "tenants[0].media.callee_srtp",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.media]\nrecord_to = \"recorder:5004\"\n"),
                "tenants[0].media.record_to",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.media]\nrecord_to = \"0.0.0.0:5004\"\n"),
                "tenants[0].media.record_to",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.media]\nrecord_to = \"10.0.0.9:5004\"\nrecord_legs = \"all\"\n"),
                "tenants[0].media.record_legs",
            ),
            (
                format!("{LISTENER}{TENANT}[tenants.media]\nrecord_legs = \"caller\"\n"),
                "tenants[0].media.record_legs",
            ),
        ];
        for (text, key) in cases {
            let e = err(&f, text);
            assert!(e.contains(key), "error {e:?} should name {key:?}");
        }
    }

    #[test]
    fn certificate_expiry_is_read() {
        let cfg = Config::embedded_default().expect("default");
        let not_after = cfg.listeners[0].certificate_not_after().expect("expiry");
        // rcgen's default validity runs to 4096.
        assert!(not_after > std::time::SystemTime::now() + Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn default_config_file_is_the_embedded_default() {
        let f = files();
        let text = default_config_file("cert.pem", "key.pem");
        let file = Config::from_toml_str(&text, &f.dir).expect("the starting file validates");
        let embedded = Config::embedded_default().expect("default");
        assert_eq!(file.listeners[0].address, embedded.listeners[0].address);
        assert_eq!(file.listeners[0].name, embedded.listeners[0].name);
        assert_eq!(file.tenants.len(), embedded.tenants.len());
        assert_eq!(file.tenants[0].id, embedded.tenants[0].id);
        assert_eq!(
            file.tenants[0].routes[0].targets[0].uri.to_string(),
            embedded.tenants[0].routes[0].targets[0].uri.to_string()
        );
        assert_eq!(
            file.summary().lines().count(),
            embedded.summary().lines().count()
        );
        // Paths are written as TOML strings, whatever they hold.
        let odd: toml::Value =
            toml::from_str(&default_config_file("a \"b\".pem", "k")).expect("toml");
        assert_eq!(
            odd["listeners"][0]["certificate"].as_str(),
            Some("a \"b\".pem")
        );
    }

    #[test]
    fn embedded_default_is_the_documented_demo() {
        let cfg = Config::embedded_default().expect("default");
        assert_eq!(
            cfg.listeners[0].address,
            "127.0.0.1:5061".parse().expect("addr")
        );
        assert_eq!(cfg.tenants[0].id.as_str(), "demo");
        assert_eq!(
            cfg.tenants[0].routes[0].targets[0].uri.to_string(),
            "sips:127.0.0.1:5062"
        );
    }
}
