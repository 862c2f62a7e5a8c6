//! Tenant routes in the config: `[[tenants.routes]]` with one target (`target = "sips:..."`)
//! or several (`targets = [{ uri, priority, weight }]`), the responses that send a call on
//! to the next target (`failover_on`), the per-try timeout (`try_timeout_ms`) and the trunk
//! health check of the route's targets (`[tenants.routes.health]`).
//!
//! Owns: the raw route schema, its validation into [`Route`], and the bounds and defaults
//! of failover and health checks. Must not: order or pick targets (the SIP core does, per
//! call, with its seeded RNG) or parse a target URI itself (`parse_target` in the parent
//! module is the one parser of `TargetUri`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{certificates, invalid, parse_target, read_file, ConfigError, TargetUri};

/// Most targets one route may list: each failed try can cost up to its try timeout, so
/// sixteen 2 s tries already take longer than a platform waits for an answer (its own
/// Timer B is 32 s), and the per-call candidate list stays small.
pub const MAX_TARGETS_PER_ROUTE: usize = 16;

/// Most status codes in one `failover_on`: the 4xx-6xx codes that mean "try elsewhere" are
/// a handful; the bound keeps a typo'd generated list from growing without end.
pub const MAX_FAILOVER_CODES: usize = 32;

/// Statuses that send a call on to the next target when `failover_on` is not given:
/// timeout, server error, unavailable (the set Kamailio's and OpenSIPS' dispatcher
/// examples use).
pub const DEFAULT_FAILOVER_ON: [u16; 3] = [408, 500, 503];

/// How long a try waits for any response (even 100 Trying) before the next target is
/// tried: a live trunk on a working connection answers an INVITE with 100 within a round
/// trip, so 2 s of silence means it is not there.
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// Shortest and longest `try_timeout_ms`: under 100 ms a slow but live trunk on another
/// continent is abandoned; past 32 s (Timer B with the default T1) the transaction has
/// given up anyway.
pub const TRY_TIMEOUT_RANGE_MS: (u64, u64) = (100, 32_000);

/// Default seconds between OPTIONS pings to one target.
pub const DEFAULT_OPTIONS_INTERVAL_SECS: u64 = 30;
/// Default wait for a ping's answer.
pub const DEFAULT_OPTIONS_TIMEOUT_MS: u64 = 2_000;
/// Default consecutive failed pings that mark a target down.
pub const DEFAULT_DOWN_AFTER: u32 = 3;
/// Default consecutive answered pings that mark a down target up again.
pub const DEFAULT_UP_AFTER: u32 = 2;
/// Longest ping interval: an hour between checks is already no health check.
pub const MAX_OPTIONS_INTERVAL_SECS: u64 = 3_600;
/// Most consecutive results `down_after` / `up_after` may ask for: past this a state
/// change takes longer than anyone watches for it.
pub const MAX_HEALTH_COUNT: u32 = 100;

/// One target of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub uri: TargetUri,
    /// Lower first (RFC 2782 priority).
    pub priority: u16,
    /// Share among targets of equal priority (RFC 2782 weight; 0: only when the others
    /// are out).
    pub weight: u16,
}

/// When a call leaves a target for the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Final statuses (to the initial INVITE) that try the next target.
    pub on: Vec<u16>,
    /// How long a try waits for any response (even 100) before the next target is tried.
    /// Only for tries that have a next target: the last one runs on Timer B.
    pub try_timeout: Duration,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            on: DEFAULT_FAILOVER_ON.to_vec(),
            try_timeout: DEFAULT_TRY_TIMEOUT,
        }
    }
}

/// OPTIONS health checks of a route's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between pings to one target.
    pub interval: Duration,
    /// How long a ping waits for its answer.
    pub timeout: Duration,
    /// Consecutive failed pings that mark a target down.
    pub down_after: u32,
    /// Consecutive answered pings that mark a down target up.
    pub up_after: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval: Duration::from_secs(DEFAULT_OPTIONS_INTERVAL_SECS),
            timeout: Duration::from_millis(DEFAULT_OPTIONS_TIMEOUT_MS),
            down_after: DEFAULT_DOWN_AFTER,
            up_after: DEFAULT_UP_AFTER,
        }
    }
}

/// One route of a tenant: called numbers starting with `prefix` go to `targets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    /// At least one, at most [`MAX_TARGETS_PER_ROUTE`], in config order.
    pub targets: Vec<RouteTarget>,
    /// Name verified in the targets' certificates (default: each target's host).
    pub server_name: Option<String>,
    /// CA bundle trusted for these targets (default: the public web PKI roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Where `ca_pem` came from (the certificate poll re-reads it).
    pub ca_path: Option<PathBuf>,
    pub failover: Failover,
    /// OPTIONS pings to the targets; `None` (no `[tenants.routes.health]`): no pings,
    /// every target counts as up.
    pub health: Option<HealthSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(default)]
    prefix: String,
    pub(super) target: Option<String>,
    targets: Option<Vec<RawTarget>>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
    failover_on: Option<Vec<u16>>,
    try_timeout_ms: Option<u64>,
    health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    uri: String,
    #[serde(default)]
    priority: u16,
    #[serde(default = "default_weight")]
    weight: u16,
}

fn default_weight() -> u16 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "default_interval")]
    options_interval_secs: u64,
    #[serde(default = "default_timeout")]
    options_timeout_ms: u64,
    #[serde(default = "default_down")]
    down_after: u32,
    #[serde(default = "default_up")]
    up_after: u32,
}

fn default_interval() -> u64 {
    DEFAULT_OPTIONS_INTERVAL_SECS
}
fn default_timeout() -> u64 {
    DEFAULT_OPTIONS_TIMEOUT_MS
}
fn default_down() -> u32 {
    DEFAULT_DOWN_AFTER
}
fn default_up() -> u32 {
    DEFAULT_UP_AFTER
}

/// Validate a tenant's routes (`key` is the tenant's path, e.g. `tenants[0]`).
pub(super) fn validate_routes(
    raw: &[RawRoute],
    key: &str,
    base: &Path,
) -> Result<Vec<Route>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            format!("{key}.routes"),
            "at least one route is required",
        ));
    }
    let mut routes = Vec::new();
    let mut prefixes = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let k = format!("{key}.routes[{i}]");
        if !r
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+*#-._".contains(&b))
        {
            return Err(invalid(
                format!("{k}.prefix"),
                format!("{:?} is not a number prefix", r.prefix),
            ));
        }
        if let Some(j) = prefixes.insert(r.prefix.clone(), i) {
            return Err(invalid(
                format!("{k}.prefix"),
                format!("{:?} is also the prefix of routes[{j}]", r.prefix),
            ));
        }
        routes.push(validate_route(r, &k, base)?);
    }
    Ok(routes)
}

fn validate_route(r: &RawRoute, k: &str, base: &Path) -> Result<Route, ConfigError> {
    let targets = validate_targets(r, k)?;
    let (ca_path, ca_pem) = match &r.ca_file {
        Some(p) => {
            let (path, pem) = read_file(&format!("{k}.ca_file"), base, p)?;
            certificates(&format!("{k}.ca_file"), &path, &pem)?;
            (Some(path), Some(pem))
        }
        None => (None, None),
    };
    if let Some(n) = &r.server_name {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            return Err(invalid(
                format!("{k}.server_name"),
                format!("{n:?} is not a server name"),
            ));
        }
    }
    Ok(Route {
        prefix: r.prefix.clone(),
        targets,
        server_name: r.server_name.clone(),
        ca_pem,
        ca_path,
        failover: validate_failover(r, k)?,
        health: r
            .health
            .as_ref()
            .map(|h| validate_health(h, &format!("{k}.health")))
            .transpose()?,
    })
}

fn validate_targets(r: &RawRoute, k: &str) -> Result<Vec<RouteTarget>, ConfigError> {
    match (&r.target, &r.targets) {
        (Some(t), None) => {
            let uri = parse_target(t).map_err(|m| invalid(format!("{k}.target"), m))?;
            Ok(vec![RouteTarget {
                uri,
                priority: 0,
                weight: 1,
            }])
        }
        (None, Some(list)) => {
            if list.is_empty() || list.len() > MAX_TARGETS_PER_ROUTE {
                return Err(invalid(
                    format!("{k}.targets"),
                    format!("must list 1 to {MAX_TARGETS_PER_ROUTE} targets"),
                ));
            }
            let mut out: Vec<RouteTarget> = Vec::new();
            for (j, t) in list.iter().enumerate() {
                let tk = format!("{k}.targets[{j}].uri");
                let uri = parse_target(&t.uri).map_err(|m| invalid(tk.clone(), m))?;
                if out.iter().any(|o| o.uri == uri) {
                    return Err(invalid(tk, format!("{uri} is listed twice")));
                }
                out.push(RouteTarget {
                    uri,
                    priority: t.priority,
                    weight: t.weight,
                });
            }
            Ok(out)
        }
        (Some(_), Some(_)) => Err(invalid(
            format!("{k}.targets"),
            "give either `target` or `targets`, not both",
        )),
        (None, None) => Err(invalid(
            format!("{k}.target"),
            "a route needs `target` (one trunk) or `targets` (several)",
        )),
    }
}

fn validate_failover(r: &RawRoute, k: &str) -> Result<Failover, ConfigError> {
    let mut failover = Failover::default();
    if let Some(codes) = &r.failover_on {
        if codes.len() > MAX_FAILOVER_CODES {
            return Err(invalid(
                format!("{k}.failover_on"),
                format!("at most {MAX_FAILOVER_CODES} statuses"),
            ));
        }
        if let Some(c) = codes.iter().find(|c| !(400..=699).contains(*c)) {
            return Err(invalid(
                format!("{k}.failover_on"),
                format!("{c} is not a 4xx, 5xx or 6xx status"),
            ));
        }
        failover.on = codes.clone();
    }
    if let Some(ms) = r.try_timeout_ms {
        let (lo, hi) = TRY_TIMEOUT_RANGE_MS;
        if !(lo..=hi).contains(&ms) {
            return Err(invalid(
                format!("{k}.try_timeout_ms"),
                format!("must be between {lo} and {hi}"),
            ));
        }
        failover.try_timeout = Duration::from_millis(ms);
    }
    Ok(failover)
}

fn validate_health(h: &RawHealth, k: &str) -> Result<HealthSettings, ConfigError> {
    if !(1..=MAX_OPTIONS_INTERVAL_SECS).contains(&h.options_interval_secs) {
        return Err(invalid(
            format!("{k}.options_interval_secs"),
            format!("must be between 1 and {MAX_OPTIONS_INTERVAL_SECS}"),
        ));
    }
    let interval_ms = h.options_interval_secs * 1000;
    if !(100..=interval_ms).contains(&h.options_timeout_ms) {
        return Err(invalid(
            format!("{k}.options_timeout_ms"),
            "must be at least 100 and at most the interval",
        ));
    }
    for (name, v) in [("down_after", h.down_after), ("up_after", h.up_after)] {
        if !(1..=MAX_HEALTH_COUNT).contains(&v) {
            return Err(invalid(
                format!("{k}.{name}"),
                format!("must be between 1 and {MAX_HEALTH_COUNT}"),
            ));
        }
    }
    Ok(HealthSettings {
        interval: Duration::from_secs(h.options_interval_secs),
        timeout: Duration::from_millis(h.options_timeout_ms),
        down_after: h.down_after,
        up_after: h.up_after,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{self_signed, Config};

    const LISTENER: &str = "[[listeners]]\nname=\"l\"\naddress=\"127.0.0.1:5061\"\ncertificate=\"cert.pem\"\nprivate_key=\"key.pem\"\n";
    const HEAD: &str = "[[tenants]]\nid=\"t1\"\n[tenants.recognition]\nsource_cidrs=[\"10.0.0.0/8\"]\n[[tenants.routes]]\n";

    fn parse(route: &str) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!(
            "sbc-core-routes-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = self_signed(&["localhost".into()]).expect("cert");
        std::fs::write(dir.join("cert.pem"), cert).expect("w");
        std::fs::write(dir.join("key.pem"), key).expect("w");
        Config::from_toml_str(&format!("{LISTENER}{HEAD}{route}"), &dir).map_err(|e| e.to_string())
    }

    #[test]
    fn one_target_shorthand_and_target_list_with_defaults() {
        let cfg = parse("target=\"sips:a.example\"\n").expect("shorthand");
        let r = &cfg.tenants[0].routes[0];
        assert_eq!(r.targets.len(), 1);
        // No port: resolved by NAPTR/SRV (RFC 3263), so none is shown.
        assert_eq!(r.targets[0].uri.to_string(), "sips:a.example");
        assert_eq!(r.failover.on, vec![408, 500, 503]);
        assert_eq!(r.failover.try_timeout, super::DEFAULT_TRY_TIMEOUT);
        assert_eq!(r.health, None);

        let cfg = parse(
            "targets=[{uri=\"sips:a:5061\", priority=10, weight=60}, {uri=\"sips:b\"}]\n\
             failover_on=[503]\ntry_timeout_ms=500\n[tenants.routes.health]\ndown_after=2\n",
        )
        .expect("list");
        let r = &cfg.tenants[0].routes[0];
        assert_eq!(
            r.targets
                .iter()
                .map(|t| (t.uri.to_string(), t.priority, t.weight))
                .collect::<Vec<_>>(),
            vec![
                ("sips:a:5061".to_string(), 10, 60),
                ("sips:b".to_string(), 0, 1)
            ]
        );
        assert_eq!(r.failover.on, vec![503]);
        assert_eq!(r.failover.try_timeout.as_millis(), 500);
        let h = r.health.expect("health");
        assert_eq!(
            (
                h.interval.as_secs(),
                h.timeout.as_millis(),
                h.down_after,
                h.up_after
            ),
            (30, 2000, 2, 2)
        );
    }

    #[test]
    fn bad_routes_name_their_key() {
        let many: Vec<String> = (0..17).map(|i| format!("{{uri=\"sips:h{i}\"}}")).collect();
        let many = format!("targets=[{}]\n", many.join(","));
        for (route, key) in [
            ("", "tenants[0].routes[0].target"),
            (
                "target=\"sips:a\"\ntargets=[{uri=\"sips:b\"}]\n",
                "tenants[0].routes[0].targets",
            ),
            ("targets=[]\n", "tenants[0].routes[0].targets"),
            (many.as_str(), "tenants[0].routes[0].targets"),
            (
                "targets=[{uri=\"sips:a\"},{uri=\"sip:b\"}]\n",
                "tenants[0].routes[0].targets[1].uri",
            ),
            (
                "targets=[{uri=\"sips:a:5061\"},{uri=\"sips:a:5061\"}]\n",
                "tenants[0].routes[0].targets[1].uri",
            ),
            (
                "target=\"sips:a\"\nfailover_on=[200]\n",
                "tenants[0].routes[0].failover_on",
            ),
            (
                "target=\"sips:a\"\ntry_timeout_ms=50\n",
                "tenants[0].routes[0].try_timeout_ms",
            ),
            (
                "target=\"sips:a\"\n[tenants.routes.health]\noptions_interval_secs=0\n",
                "tenants[0].routes[0].health.options_interval_secs",
            ),
            (
                "target=\"sips:a\"\n[tenants.routes.health]\noptions_interval_secs=1\noptions_timeout_ms=5000\n",
                "tenants[0].routes[0].health.options_timeout_ms",
            ),
            (
                "target=\"sips:a\"\n[tenants.routes.health]\nup_after=0\n",
                "tenants[0].routes[0].health.up_after",
            ),
        ] {
            let err = parse(route).expect_err(route);
            assert!(err.contains(&format!("`{key}`")), "{route}: {err}");
        }
        let err = parse("targets=[{uri=\"sips:a\", wieght=3}]\n").expect_err("unknown key");
        assert!(err.contains("wieght"), "{err}");
        let err = parse("targets=[{uri=\"sips:a\", weight=70000}]\n").expect_err("u16");
        assert!(err.contains("weight") || err.contains("70000"), "{err}");
    }
}
