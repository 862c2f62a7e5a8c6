//! The optional `[cluster]` section: several gateways sharing every tenant's quotas
//! through Redis (or Valkey). Absent: one node, no Redis, nothing changes.
//!
//! Owns: the raw section as written, its validation and the typed [`ClusterSettings`].
//! Must not: open connections (the `sbc-cluster` crate does).

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Default deadline of one admission round trip to Redis: a call setup budget of a few
/// hundred milliseconds can spare it, and loopback / same-zone Redis answers in well
/// under a millisecond.
pub const DEFAULT_TIMEOUT_MS: u64 = 50;
/// Longest deadline accepted: past a few seconds the caller's own INVITE timer (T1·64 =
/// 32 s, but platforms give up after a few seconds) makes waiting pointless.
pub const MAX_TIMEOUT_MS: u64 = 5_000;
/// Default life of a concurrent-call lease: a node that dies stops counting this long
/// after its last renewal.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 30;
/// Default renewal interval: a third of the TTL, so two renewals can fail before a live
/// call's lease expires.
pub const DEFAULT_RENEW_SECS: u64 = 10;
/// Default heartbeat interval; a node is live while its last heartbeat is younger than
/// [`HEARTBEAT_LIVE_FACTOR`] intervals.
pub const DEFAULT_HEARTBEAT_MS: u64 = 1_000;
/// A node counts as live for this many heartbeat intervals after its last one.
pub const HEARTBEAT_LIVE_FACTOR: u32 = 3;
/// Longest node id: it is part of every lease member and key.
const MAX_NODE_ID: usize = 64;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// One server, `host:port`.
    Direct(String),
    /// Sentinels (`host:port` each) that know the master by this name.
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
    },
}

/// A validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's name, unique in the cluster (part of lease members and its heartbeat).
    pub node_id: String,
    pub redis: RedisEndpoint,
    /// Deadline of one admission round trip (connect included); past it the node admits
    /// from its local share.
    pub timeout: Duration,
    /// Life of a concurrent-call lease without renewal.
    pub lease_ttl: Duration,
    /// How often the owner renews its leases.
    pub renew_interval: Duration,
    /// How often the node announces itself (live nodes set the local share).
    pub heartbeat_interval: Duration,
    /// Prefix of every key, so several clusters can share one Redis.
    pub key_prefix: String,
    /// `[cluster.standby]`: replicate this node's calls (and, with `peer`, stand by for
    /// that node's); `None`: quotas only.
    pub standby: Option<StandbySettings>,
}

/// Default bound of a node's change stream (XADD MAXLEN ~): a standby that falls further
/// behind than this reloads the peer's whole call set instead of reading the stream.
pub const DEFAULT_STREAM_MAXLEN: u64 = 100_000;
/// Default and longest interval between two writes of a stream's SRTP indexes (issue #16:
/// at least every 60 s); a rollover is written before it happens whatever this is.
pub const DEFAULT_INDEX_REFRESH_SECS: u64 = 60;

/// A validated `[cluster.standby]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings {
    /// The node whose calls this one takes over when it dies (`None`: this node only
    /// replicates its own calls for its standby).
    pub peer: Option<String>,
    /// File holding the cluster key-encryption key (32 bytes as 64 hex digits): SRTP keys
    /// are encrypted with it before they reach Redis. Read by sbc-cluster at start.
    pub key_file: std::path::PathBuf,
    /// Bound of this node's change stream.
    pub stream_maxlen: u64,
    /// Longest interval between two writes of a stream's SRTP indexes.
    pub index_refresh: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStandby {
    peer: Option<String>,
    key_file: std::path::PathBuf,
    #[serde(default = "default_stream_maxlen")]
    stream_maxlen: u64,
    #[serde(default = "default_index_refresh")]
    index_refresh_secs: u64,
}

fn default_stream_maxlen() -> u64 {
    DEFAULT_STREAM_MAXLEN
}
fn default_index_refresh() -> u64 {
    DEFAULT_INDEX_REFRESH_SECS
}

fn validate_standby(node_id: &str, s: &RawStandby) -> Result<StandbySettings, ConfigError> {
    if let Some(peer) = &s.peer {
        if !name_ok(peer, MAX_NODE_ID) {
            return Err(invalid(
                "cluster.standby.peer",
                format!("1 to {MAX_NODE_ID} characters of A-Z a-z 0-9 . _ -"),
            ));
        }
        if peer == node_id {
            return Err(invalid(
                "cluster.standby.peer",
                "must name another node than cluster.node_id",
            ));
        }
    }
    if s.key_file.as_os_str().is_empty() {
        return Err(invalid("cluster.standby.key_file", "must name a file"));
    }
    if !(1_000..=10_000_000).contains(&s.stream_maxlen) {
        return Err(invalid(
            "cluster.standby.stream_maxlen",
            "must be between 1000 and 10000000",
        ));
    }
    if !(1..=DEFAULT_INDEX_REFRESH_SECS).contains(&s.index_refresh_secs) {
        return Err(invalid(
            "cluster.standby.index_refresh_secs",
            format!("must be between 1 and {DEFAULT_INDEX_REFRESH_SECS}"),
        ));
    }
    Ok(StandbySettings {
        peer: s.peer.clone(),
        key_file: s.key_file.clone(),
        stream_maxlen: s.stream_maxlen,
        index_refresh: Duration::from_secs(s.index_refresh_secs),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    node_id: String,
    redis: Option<String>,
    #[serde(default)]
    sentinels: Vec<String>,
    master_name: Option<String>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_ttl")]
    lease_ttl_secs: u64,
    #[serde(default = "default_renew")]
    renew_secs: u64,
    #[serde(default = "default_heartbeat")]
    heartbeat_ms: u64,
    #[serde(default = "default_prefix")]
    key_prefix: String,
    standby: Option<RawStandby>,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_ttl() -> u64 {
    DEFAULT_LEASE_TTL_SECS
}
fn default_renew() -> u64 {
    DEFAULT_RENEW_SECS
}
fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_MS
}
fn default_prefix() -> String {
    "sbc".to_string()
}

fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn host_port_ok(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

pub(super) fn validate_cluster(c: &RawCluster) -> Result<ClusterSettings, ConfigError> {
    if !name_ok(&c.node_id, MAX_NODE_ID) {
        return Err(invalid(
            "cluster.node_id",
            format!("1 to {MAX_NODE_ID} characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    if !name_ok(&c.key_prefix, MAX_NODE_ID) {
        return Err(invalid(
            "cluster.key_prefix",
            format!("1 to {MAX_NODE_ID} characters of A-Z a-z 0-9 . _ -"),
        ));
    }
    let redis = match (&c.redis, c.sentinels.is_empty(), &c.master_name) {
        (Some(addr), true, None) => {
            if !host_port_ok(addr) {
                return Err(invalid("cluster.redis", "must be host:port"));
            }
            RedisEndpoint::Direct(addr.clone())
        }
        (None, false, Some(name)) => {
            if let Some(bad) = c.sentinels.iter().find(|s| !host_port_ok(s)) {
                return Err(invalid(
                    "cluster.sentinels",
                    format!("{bad:?} is not host:port"),
                ));
            }
            if !name_ok(name, 128) {
                return Err(invalid("cluster.master_name", "must be a plain name"));
            }
            RedisEndpoint::Sentinel {
                sentinels: c.sentinels.clone(),
                master_name: name.clone(),
            }
        }
        (None, false, None) => {
            return Err(invalid("cluster.master_name", "required with sentinels"))
        }
        (None, true, _) => {
            return Err(invalid(
                "cluster.redis",
                "set redis = \"host:port\" or sentinels = [..] with master_name",
            ))
        }
        (Some(_), _, _) => {
            return Err(invalid(
                "cluster.redis",
                "redis and sentinels/master_name exclude each other",
            ))
        }
    };
    if !(1..=MAX_TIMEOUT_MS).contains(&c.timeout_ms) {
        return Err(invalid(
            "cluster.timeout_ms",
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    if !(1..=3600).contains(&c.lease_ttl_secs) {
        return Err(invalid(
            "cluster.lease_ttl_secs",
            "must be between 1 and 3600",
        ));
    }
    // Renewing at most every half TTL leaves a live call one failed renewal of margin.
    if c.renew_secs == 0 || c.renew_secs * 2 > c.lease_ttl_secs {
        return Err(invalid(
            "cluster.renew_secs",
            "must be at least 1 and at most half of lease_ttl_secs",
        ));
    }
    if !(100..=60_000).contains(&c.heartbeat_ms) {
        return Err(invalid(
            "cluster.heartbeat_ms",
            "must be between 100 and 60000",
        ));
    }
    Ok(ClusterSettings {
        node_id: c.node_id.clone(),
        redis,
        timeout: Duration::from_millis(c.timeout_ms),
        lease_ttl: Duration::from_secs(c.lease_ttl_secs),
        renew_interval: Duration::from_secs(c.renew_secs),
        heartbeat_interval: Duration::from_millis(c.heartbeat_ms),
        key_prefix: c.key_prefix.clone(),
        standby: c
            .standby
            .as_ref()
            .map(|s| validate_standby(&c.node_id, s))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterSettings, String> {
        let raw: RawCluster = toml::from_str(text).map_err(|e| e.to_string())?;
        validate_cluster(&raw).map_err(|e| e.to_string())
    }

    #[test]
    fn direct_with_defaults() {
        let c = parse("node_id = \"a\"\nredis = \"127.0.0.1:6379\"\n").expect("ok");
        assert_eq!(c.redis, RedisEndpoint::Direct("127.0.0.1:6379".into()));
        assert_eq!(c.timeout, Duration::from_millis(50));
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.renew_interval, Duration::from_secs(10));
        assert_eq!(c.key_prefix, "sbc");
    }

    #[test]
    fn sentinel() {
        let c = parse(
            "node_id = \"a\"\nsentinels = [\"10.0.0.1:26379\", \"h:26379\"]\nmaster_name = \"m\"\n",
        )
        .expect("ok");
        assert_eq!(
            c.redis,
            RedisEndpoint::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "h:26379".into()],
                master_name: "m".into()
            }
        );
    }

    #[test]
    fn refusals_name_the_key() {
        for (text, key) in [
            ("node_id = \"\"\nredis = \"h:1\"\n", "cluster.node_id"),
            ("node_id = \"a b\"\nredis = \"h:1\"\n", "cluster.node_id"),
            ("node_id = \"a\"\n", "cluster.redis"),
            ("node_id = \"a\"\nredis = \"nohost\"\n", "cluster.redis"),
            (
                "node_id = \"a\"\nredis = \"h:1\"\nsentinels = [\"h:2\"]\nmaster_name = \"m\"\n",
                "cluster.redis",
            ),
            (
                "node_id = \"a\"\nsentinels = [\"h:2\"]\n",
                "cluster.master_name",
            ),
            (
                "node_id = \"a\"\nredis = \"h:1\"\ntimeout_ms = 0\n",
                "cluster.timeout_ms",
            ),
            (
                "node_id = \"a\"\nredis = \"h:1\"\nlease_ttl_secs = 3\nrenew_secs = 2\n",
                "cluster.renew_secs",
            ),
            (
                "node_id = \"a\"\nredis = \"h:1\"\nheartbeat_ms = 5\n",
                "cluster.heartbeat_ms",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse("node_id = \"a\"\nredis = \"h:1\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn standby_section() {
        let base = "node_id = \"a\"\nredis = \"h:1\"\n";
        assert_eq!(parse(base).expect("ok").standby, None);
        let c = parse(&format!(
            "{base}[standby]\npeer = \"b\"\nkey_file = \"/k\"\n"
        ))
        .expect("ok");
        let s = c.standby.expect("standby");
        assert_eq!(s.peer.as_deref(), Some("b"));
        assert_eq!(s.stream_maxlen, DEFAULT_STREAM_MAXLEN);
        assert_eq!(s.index_refresh, Duration::from_secs(60));
        for (extra, key) in [
            ("peer = \"a\"\nkey_file = \"/k\"\n", "cluster.standby.peer"),
            ("key_file = \"\"\n", "cluster.standby.key_file"),
            (
                "key_file = \"/k\"\nindex_refresh_secs = 61\n",
                "cluster.standby.index_refresh_secs",
            ),
            (
                "key_file = \"/k\"\nstream_maxlen = 5\n",
                "cluster.standby.stream_maxlen",
            ),
        ] {
            let e = parse(&format!("{base}[standby]\n{extra}")).expect_err(extra);
            assert!(e.contains(key), "{extra}: {e}");
        }
        assert!(parse(&format!("{base}[standby]\nkey_file = \"/k\"\nbogus = 1\n")).is_err());
    }
}
