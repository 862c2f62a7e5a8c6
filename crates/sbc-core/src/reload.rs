//! What a reload changes: the keys that differ between the running config and a new one,
//! each with whether the running gateway applies it live or needs a restart for it (and
//! why), so a SIGHUP can say exactly what it did. Also the interface through which the
//! admin plane changes the log filter at run time ([`LogLevelControl`]).
//!
//! Owns: the comparison and the list of what is live. Must not: apply anything (the SIP
//! server, the admin plane and `main` do), or name a secret: a changed private key is
//! reported by its key name only, never by value.

use std::fmt;

use crate::config::{Config, Listener, Tenant};

/// Whether the running gateway applies a changed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied at once (to new calls and connections; running calls keep what they have).
    Live,
    /// Applied to calls, but part of the gateway keeps the old value until a restart.
    Partly {
        /// What is not applied.
        why: &'static str,
    },
    /// Not applied: the running value stays until the gateway is restarted.
    NeedsRestart {
        /// Why it cannot change while running.
        why: &'static str,
    },
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its path in the config file, e.g. `tenants.acme.routes` or `sip.t1_ms`. Tenants and
    /// listeners are named by id and name, not by position.
    pub key: String,
    /// Whether it is applied.
    pub applied: Applied,
}

impl Change {
    fn live(key: impl Into<String>) -> Change {
        Change {
            key: key.into(),
            applied: Applied::Live,
        }
    }

    fn restart(key: impl Into<String>, why: &'static str) -> Change {
        Change {
            key: key.into(),
            applied: Applied::NeedsRestart { why },
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.applied {
            Applied::Live => write!(f, "{}: applied", self.key),
            Applied::Partly { why } => write!(f, "{}: applied, except: {why}", self.key),
            Applied::NeedsRestart { why } => write!(f, "{}: not applied: {why}", self.key),
        }
    }
}

const WHY_MEDIA: &str = "the media relay's sockets, port pool and workers are set up at start";
const WHY_CONN: &str = "connection settings are fixed when the SIP server starts";
const WHY_B2BUA: &str = "the B2BUA's timers and header settings are fixed at start";
const WHY_LISTENER_SET: &str =
    "listeners are bound at start; adding, removing, renaming or reordering one needs a restart";
const WHY_LISTENER_ADDR: &str = "the listener's socket is bound at start";
const WHY_ADVERTISED: &str =
    "the advertised host is written into Via, Contact and Call-IDs from start";
const WHY_FORMAT: &str = "the log output format is chosen at start";
const WHY_REDACTION: &str = "the SIP core's log redaction is fixed at start";
const WHY_NEW_TENANT: &str =
    "the admin plane's tenant list is fixed at start: its usage view and tenant tokens need a restart";

/// The keys that differ between `old` (running) and `new` (just loaded), in file order:
/// `logging`, `sip`, `media`, `listeners`, `tenants`, `flood_guard`, `overload`, `admin`.
/// Empty if nothing changed.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    // logging
    if old.logging.level != new.logging.level {
        out.push(Change::live("logging.level"));
    }
    if old.logging.json != new.logging.json {
        out.push(Change::restart("logging.format", WHY_FORMAT));
    }
    if old.logging.redact_numbers != new.logging.redact_numbers {
        out.push(Change::restart("logging.redact_numbers", WHY_REDACTION));
    }
    // sip
    let (a, b) = (&old.sip, &new.sip);
    for (key, changed, why) in [
        (
            "sip.max_message_bytes",
            a.max_message_bytes != b.max_message_bytes,
            WHY_CONN,
        ),
        ("sip.max_headers", a.max_headers != b.max_headers, WHY_CONN),
        (
            "sip.idle_timeout_secs",
            a.idle_timeout != b.idle_timeout,
            WHY_CONN,
        ),
        (
            "sip.message_timeout_ms",
            a.message_timeout != b.message_timeout,
            WHY_CONN,
        ),
        (
            "sip.max_partial_connections_per_source",
            a.max_partial_connections_per_source != b.max_partial_connections_per_source,
            WHY_CONN,
        ),
        ("sip.t1_ms", a.t1 != b.t1, WHY_B2BUA),
        (
            "sip.max_ringing_secs",
            a.max_ringing != b.max_ringing,
            WHY_B2BUA,
        ),
        (
            "sip.max_forwards",
            a.max_forwards != b.max_forwards,
            WHY_B2BUA,
        ),
    ] {
        if changed {
            out.push(Change::restart(key, why));
        }
    }
    if a.drain_deadline != b.drain_deadline {
        out.push(Change::live("sip.drain_deadline_secs"));
    }
    if a.cert_poll != b.cert_poll {
        out.push(Change::live("sip.cert_poll_secs"));
    }
    // The resolver is rebuilt (empty cache) for connections opened from then on.
    if a.dns.servers != b.dns.servers {
        out.push(Change::live("sip.dns_servers"));
    }
    if a.dns.timeout != b.dns.timeout {
        out.push(Change::live("sip.dns_timeout_ms"));
    }
    // media
    let (a, b) = (&old.media, &new.media);
    for (key, changed) in [
        ("media.enabled", a.enabled != b.enabled),
        ("media.address", a.address != b.address),
        (
            "media.advertised_address",
            a.advertised_address != b.advertised_address,
        ),
        ("media.port_min", a.port_min != b.port_min),
        ("media.port_max", a.port_max != b.port_max),
        ("media.timeout_secs", a.timeout != b.timeout),
        (
            "media.relatch_after_secs",
            a.relatch_after != b.relatch_after,
        ),
        ("media.max_streams", a.max_streams != b.max_streams),
        ("media.workers", a.workers != b.workers),
        (
            "media.batch_interval_us",
            a.batch_interval != b.batch_interval,
        ),
        ("media.freebind", a.freebind != b.freebind),
    ] {
        if changed {
            out.push(Change::restart(key, WHY_MEDIA));
        }
    }
    listeners(&old.listeners, &new.listeners, &mut out);
    tenants(&old.tenants, &new.tenants, &mut out);
    if old.flood_guard != new.flood_guard {
        out.push(Change::live("flood_guard"));
    }
    if old.overload.max_calls_per_second != new.overload.max_calls_per_second {
        out.push(Change::live("overload.max_calls_per_second"));
    }
    if old.overload.max_core_queue != new.overload.max_core_queue {
        out.push(Change::live("overload.max_core_queue"));
    }
    if old.admin_section != new.admin_section {
        // The admin plane says itself which of its keys need a restart.
        out.push(Change::live("admin"));
    }
    if old.cluster != new.cluster {
        out.push(Change::restart(
            "cluster",
            "the Redis connection, node id and lease timings are set at start",
        ));
    }
    out
}

/// Listeners are compared by position and name: the SIP core knows them by index.
fn listeners(old: &[Listener], new: &[Listener], out: &mut Vec<Change>) {
    let names = |ls: &[Listener]| ls.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
    if names(old) != names(new) {
        out.push(Change::restart("listeners", WHY_LISTENER_SET));
        return;
    }
    for (a, b) in old.iter().zip(new) {
        let key = |k: &str| format!("listeners.{}.{k}", a.name);
        if a.address != b.address || a.transport != b.transport {
            out.push(Change::restart(key("address"), WHY_LISTENER_ADDR));
        }
        if a.freebind != b.freebind {
            out.push(Change::restart(key("freebind"), WHY_LISTENER_ADDR));
        }
        if a.advertised_host != b.advertised_host {
            out.push(Change::restart(key("advertised_host"), WHY_ADVERTISED));
        }
        if a.certificate_pem != b.certificate_pem {
            out.push(Change::live(key("certificate")));
        }
        if a.private_key.pem() != b.private_key.pem() {
            out.push(Change::live(key("private_key")));
        }
        if a.client_ca_pem != b.client_ca_pem {
            out.push(Change::live(key("client_ca")));
        }
        if a.require_client_cert != b.require_client_cert {
            out.push(Change::live(key("require_client_cert")));
        }
    }
}

/// Tenants are compared by id.
fn tenants(old: &[Tenant], new: &[Tenant], out: &mut Vec<Change>) {
    for a in old {
        if !new.iter().any(|b| b.id == a.id) {
            out.push(Change {
                key: format!("tenants.{} (removed)", a.id),
                applied: Applied::Partly {
                    why: WHY_NEW_TENANT,
                },
            });
        }
    }
    for b in new {
        let Some(a) = old.iter().find(|a| a.id == b.id) else {
            out.push(Change {
                key: format!("tenants.{} (added)", b.id),
                applied: Applied::Partly {
                    why: WHY_NEW_TENANT,
                },
            });
            continue;
        };
        let key = |k: &str| format!("tenants.{}.{k}", a.id);
        let (r, s) = (&a.recognition, &b.recognition);
        for (k, changed) in [
            (
                "recognition.client_cert_san",
                r.client_cert_san != s.client_cert_san,
            ),
            (
                "recognition.client_cert_sha256",
                r.client_cert_sha256 != s.client_cert_sha256,
            ),
            ("recognition.sni", r.sni != s.sni),
            ("recognition.source_cidrs", r.source_cidrs != s.source_cidrs),
            ("routes", a.routes != b.routes),
            ("media", a.media != b.media),
            ("headers", a.headers != b.headers),
            ("bodies", a.bodies != b.bodies),
        ] {
            if changed {
                out.push(Change::live(key(k)));
            }
        }
        let (l, m) = (&a.limits, &b.limits);
        for (k, changed) in [
            (
                "limits.calls_per_second",
                l.calls_per_second != m.calls_per_second,
            ),
            ("limits.call_burst", l.call_burst != m.call_burst),
            (
                "limits.max_concurrent_calls",
                l.max_concurrent_calls != m.max_concurrent_calls,
            ),
            (
                "limits.max_pending_invites",
                l.max_pending_invites != m.max_pending_invites,
            ),
            (
                "limits.requests_per_second_per_connection",
                l.requests_per_second_per_connection != m.requests_per_second_per_connection,
            ),
            (
                "limits.max_media_streams",
                l.max_media_streams != m.max_media_streams,
            ),
            (
                "limits.media_bandwidth_kbps",
                l.media_bandwidth_kbps != m.media_bandwidth_kbps,
            ),
        ] {
            if changed {
                out.push(Change::live(key(k)));
            }
        }
    }
}

/// Changes the process's log filter while it runs: `main` implements it over the log
/// subscriber, the admin plane's `PUT /v1/log-level` calls it.
pub trait LogLevelControl: Send + Sync {
    /// The filter in force (`info`, `sbc_sip=debug,info`, ...).
    fn current(&self) -> String;
    /// Replace the filter; `Err` says why `filter` was refused (the old one stays).
    fn set(&self, filter: &str) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sbc-core-reload-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        for name in ["a", "b"] {
            let (cert, key) =
                crate::config::self_signed(&[format!("{name}.example")]).expect("cert");
            std::fs::write(dir.join(format!("{name}.pem")), &cert).expect("w");
            std::fs::write(dir.join(format!("{name}.key")), key).expect("w");
        }
        dir
    }

    /// A config with `cert` (`a` or `b`) on listener `l` and the given extra text.
    fn cfg(dir: &std::path::Path, cert: &str, text: &str) -> Config {
        let full = format!(
            "[[listeners]]\nname=\"l\"\naddress=\"127.0.0.1:5061\"\ncertificate=\"{cert}.pem\"\nprivate_key=\"{cert}.key\"\n{text}"
        );
        Config::from_toml_str(&full, dir).unwrap_or_else(|e| panic!("{e}\n{full}"))
    }

    const T1: &str = "[[tenants]]\nid=\"t1\"\n[tenants.recognition]\nsource_cidrs=[\"10.0.0.0/8\"]\n[[tenants.routes]]\ntarget=\"sips:pbx.example\"\n";

    fn keys(changes: &[Change]) -> Vec<&str> {
        changes.iter().map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn dns_settings_apply_live() {
        let d = dir();
        let old = cfg(&d, "a", T1);
        let new = cfg(
            &d,
            "a",
            &format!("[sip]\ndns_servers=[\"127.0.0.1:5353\"]\ndns_timeout_ms=500\n{T1}"),
        );
        let changes = diff(&old, &new);
        assert_eq!(keys(&changes), ["sip.dns_servers", "sip.dns_timeout_ms"]);
        assert_eq!(changes[0].to_string(), "sip.dns_servers: applied");
    }

    #[test]
    fn freebind_needs_a_restart() {
        let d = dir();
        let old = cfg(&d, "a", T1);
        let mut new = cfg(&d, "a", T1);
        new.listeners[0].freebind = true;
        new.media.freebind = true;
        let changes = diff(&old, &new);
        assert_eq!(keys(&changes), ["media.freebind", "listeners.l.freebind"]);
        assert!(changes
            .iter()
            .all(|c| matches!(c.applied, Applied::NeedsRestart { .. })));
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let d = dir();
        let a = cfg(&d, "a", T1);
        assert_eq!(diff(&a, &cfg(&d, "a", T1)), vec![]);
    }

    #[test]
    fn routes_recognition_limits_and_log_level_are_live() {
        let d = dir();
        let old = cfg(&d, "a", T1);
        let new = cfg(
            &d,
            "a",
            "[logging]\nlevel=\"debug\"\n[sip]\ndrain_deadline_secs=5\n[[tenants]]\nid=\"t1\"\n[tenants.recognition]\nsource_cidrs=[\"10.0.0.0/8\"]\nsni=[\"t1.example\"]\n[[tenants.routes]]\ntarget=\"sips:pbx2.example\"\n[tenants.limits]\ncall_burst=3\n",
        );
        let changes = diff(&old, &new);
        assert_eq!(
            keys(&changes),
            [
                "logging.level",
                "sip.drain_deadline_secs",
                "tenants.t1.recognition.sni",
                "tenants.t1.routes",
                "tenants.t1.limits.call_burst"
            ]
        );
        assert!(changes.iter().all(|c| c.applied == Applied::Live));
        assert_eq!(changes[3].to_string(), "tenants.t1.routes: applied");
    }

    #[test]
    fn listener_address_media_ports_and_timers_need_a_restart_and_say_why() {
        let d = dir();
        let old = cfg(&d, "a", T1);
        let text = format!(
            "[sip]\nt1_ms=250\n[media]\nport_min=30000\nport_max=30999\n[logging]\nformat=\"json\"\n{T1}"
        );
        let mut new = cfg(&d, "a", &text);
        new.listeners[0].address = "127.0.0.1:5071".parse().expect("addr");
        let changes = diff(&old, &new);
        assert_eq!(
            keys(&changes),
            [
                "logging.format",
                "sip.t1_ms",
                "media.port_min",
                "media.port_max",
                "listeners.l.address"
            ]
        );
        for c in &changes {
            let Applied::NeedsRestart { why } = c.applied else {
                panic!("{c} should need a restart");
            };
            assert!(!why.is_empty());
        }
        assert!(changes[4]
            .to_string()
            .starts_with("listeners.l.address: not applied: "));
    }

    #[test]
    fn a_new_certificate_is_live_and_its_key_is_named_not_shown() {
        let d = dir();
        let old = cfg(&d, "a", T1);
        let new = cfg(&d, "b", T1);
        let changes = diff(&old, &new);
        assert_eq!(
            keys(&changes),
            ["listeners.l.certificate", "listeners.l.private_key"]
        );
        let text = format!("{changes:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }

    #[test]
    fn tenants_are_matched_by_id_and_listeners_by_name() {
        let d = dir();
        let old = cfg(&d, "a", T1);
        let t2 = "[[tenants]]\nid=\"t2\"\n[tenants.recognition]\nsni=[\"t2.example\"]\n[[tenants.routes]]\ntarget=\"sips:pbx.example\"\n";
        let new = cfg(&d, "a", t2);
        let changes = diff(&old, &new);
        assert_eq!(
            keys(&changes),
            ["tenants.t1 (removed)", "tenants.t2 (added)"]
        );
        assert!(matches!(changes[1].applied, Applied::Partly { .. }));
        // A second listener: the set changed, one restart line instead of per-key ones.
        let mut two = cfg(&d, "a", T1);
        let mut extra = two.listeners[0].clone();
        extra.name = "m".into();
        two.listeners.push(extra);
        let changes = diff(&old, &two);
        assert_eq!(keys(&changes), ["listeners"]);
        assert!(matches!(changes[0].applied, Applied::NeedsRestart { .. }));
    }
}
