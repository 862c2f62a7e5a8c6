//! The configuration schema, its validation, and the embedded default.
//!
//! One TOML file; unknown keys are errors (fail closed). Validation turns the raw file into
//! a typed [`Config`] whose certificates, keys and CA files have been read, so a config
//! that validates can be started. Every error names the key it is about.
//!
//! This module owns the whole file: [`Config`], [`ConfigError`], the raw top-level table,
//! the order sections are validated in, the embedded default and the summary, and the PEM
//! file helpers the sections share. Each section lives in its own file, holding its typed
//! settings, its raw (serde) struct, its validation and their unit tests:
//!
//! - `sip.rs`: `[sip]`, message and connection bounds, timers, drain ([`SipSettings`]);
//! - `dns.rs`: `sip.dns_servers` and `sip.dns_timeout_ms` ([`DnsSettings`]);
//! - [`certs`]: `sip.cert_poll_secs` and re-reading certificate, key and CA files;
//! - `listeners.rs`: `[[listeners]]` and their PEM files ([`Listener`], [`PrivateKeyPem`]);
//! - `transport.rs`: TLS / TCP / UDP of listeners and route targets ([`Transport`],
//!   [`TargetUri`]);
//! - `tenants.rs`: `[[tenants]]`, recognition and limits ([`Tenant`], [`Recognition`],
//!   [`Limits`]);
//! - `routes.rs`: `[[tenants.routes]]`, failover and health checks ([`Route`]);
//! - `media.rs`: `[media]` (the relay) and `[tenants.media]` ([`MediaSettings`]);
//! - `policy.rs`: `[tenants.headers]` and `[tenants.bodies]`, what crosses the B2BUA
//!   ([`HeaderSettings`], [`BodySettings`]);
//! - `logging.rs`: `[logging]` ([`LoggingSettings`]);
//! - `protection.rs`: `[flood_guard]` and `[overload]` ([`OverloadSettings`]);
//! - [`cluster`]: `[cluster]`, quotas shared through Redis ([`ClusterSettings`]).
//!
//! Must not: open sockets, build TLS configs, or act on a setting; the crates that own
//! each behaviour do.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::flood::FloodSettings;

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
pub use cluster::{ClusterSettings, RedisEndpoint, StandbySettings};
mod transport;
pub use transport::{parse_target, TargetUri, Transport, SIPS_DEFAULT_PORT, SIP_DEFAULT_PORT};
mod sip;
use sip::RawSip;
pub use sip::{SipSettings, MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES};
mod listeners;
use listeners::RawListener;
pub use listeners::{Listener, PrivateKeyPem};
mod tenants;
use tenants::RawTenant;
pub use tenants::{Limits, Recognition, Tenant, MAX_TENANT_ID_LEN};
mod media;
use media::RawMedia;
pub use media::{MediaSettings, SRTP_SUITES};
mod policy;
pub use policy::{
    BodySettings, HeaderRules, HeaderSettings, B2BUA_OWNED_HEADERS, GOVERNED_HEADERS,
    MAX_ALLOWED_BODY_TYPES, MAX_CONFIGURED_HEADER_VALUE, MAX_HEADER_RULES,
};
mod logging;
mod recording;
use logging::RawLogging;
pub use logging::{valid_log_filter, LoggingSettings, MAX_LOG_FILTER_LEN};
pub use recording::{
    Identities, OnFailure, RecordingMode, RecordingSettings, ANSWER_TIMEOUT_RANGE_MS,
    DEFAULT_ANSWER_TIMEOUT, MAX_SRS_TARGETS,
};
mod protection;
pub use protection::{OverloadSettings, CORE_QUEUE_CAPACITY, MAX_TRACKED_SOURCES};
use protection::{RawFlood, RawOverload};
#[cfg(test)]
mod test_support;

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
            freebind: false,
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

fn validate(raw: &RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let logging = logging::validate_logging(&raw.logging)?;
    let media = media::validate_media(&raw.media)?;
    let sip = sip::validate_sip(&raw.sip)?;
    let listeners = listeners::validate_listeners(&raw.listeners, base)?;
    let tenants = tenants::validate_tenants(&raw.tenants, base, logging.redact_numbers)?;
    transport::check_route_transports(&listeners, &tenants, &raw.tenants)?;
    Ok(Config {
        admin_section: raw.admin.clone(),
        base_dir: base.to_path_buf(),
        logging,
        media,
        sip,
        listeners,
        tenants,
        flood_guard: protection::validate_flood(&raw.flood_guard)?,
        overload: protection::validate_overload(&raw.overload)?,
        cluster: raw
            .cluster
            .as_ref()
            .map(cluster::validate_cluster)
            .transpose()?,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::{err, files, LISTENER, TENANT};
    use super::*;

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
