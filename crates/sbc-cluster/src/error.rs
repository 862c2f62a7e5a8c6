//! The crate's one error enum: what went wrong talking to Redis, by kind (the kind is the
//! `kind` label of `sbc_cluster_redis_errors_total`).

/// A failed round trip to Redis or a Sentinel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No connection could be made (refused, unreachable, no master known).
    #[error("connect: {0}")]
    Connect(String),
    /// The connection failed mid-way.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The reply did not parse (or the connection closed).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// The server is a replica now (a failover happened): re-resolve the master.
    #[error("server is read-only (a replica)")]
    ReadOnly,
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Server(String),
    /// The configuration cannot be used (a missing or malformed key file); raised at
    /// start only, never counted as a Redis error.
    #[error("{0}")]
    Config(String),
}

impl ClusterError {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterError::Connect(_) => "connect",
            ClusterError::Io(_) => "io",
            ClusterError::Protocol(_) => "protocol",
            ClusterError::Timeout => "timeout",
            ClusterError::ReadOnly => "readonly",
            ClusterError::Server(_) => "server",
            ClusterError::Config(_) => "config",
        }
    }

    /// Every kind a Redis round trip can fail with, for the metrics catalog (`config` is
    /// a start-up error, never counted).
    pub const KINDS: &'static [&'static str] =
        &["connect", "io", "protocol", "timeout", "readonly", "server"];
}
