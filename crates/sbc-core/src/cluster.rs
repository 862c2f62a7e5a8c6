//! The interface the SIP core meets cluster-wide admission through (`sbc-cluster`
//! implements it over Redis), shaped like [`crate::media::MediaControl`]: the core hands
//! a request over without waiting and the answer comes back later through a sink the
//! driver installs, as a core input.
//!
//! Owns: the request and answer types, the lease guard a cluster admission attaches to an
//! [`crate::admission::Admitted`] (and its [`CallLease::grow_streams`] for streams added
//! mid-call), the media-stream count of an SDP offer, and the arithmetic of a node's
//! local share.
//! Must not: talk to Redis or read a clock.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::admission::Refusal;
use crate::config::Limits;
use crate::tenant::TenantId;

/// Names one parked admission request (drawn by the core, unique among its parked ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// A request for a cluster-wide admission decision.
#[derive(Debug, Clone)]
pub struct ClusterRequest {
    pub ticket: Ticket,
    pub tenant: TenantId,
    /// The tenant's limits as configured (cluster-wide).
    pub limits: Limits,
    /// Media streams the INVITE's offer opens ([`offer_streams`]; 0 without SDP or
    /// without media anchoring), leased with the call and checked against
    /// `limits.max_media_streams` when that is above 0.
    pub streams: u32,
}

/// How a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionMode {
    /// By Redis, counting every node.
    Exact,
    /// Redis did not answer in time: by this node's share of the limits.
    LocalShare,
}

impl DecisionMode {
    /// A stable name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionMode::Exact => "exact",
            DecisionMode::LocalShare => "local_share",
        }
    }
}

/// What the cluster decided.
#[derive(Debug)]
pub enum ClusterVerdict {
    /// Admitted: the guard holds the call's concurrent-call lease until dropped.
    Admit(LeaseGuard),
    /// Refused (503 + Retry-After, as a local refusal).
    Refuse(Refusal),
}

/// The answer to one [`ClusterRequest`].
#[derive(Debug)]
pub struct ClusterAnswer {
    pub ticket: Ticket,
    pub mode: DecisionMode,
    pub verdict: ClusterVerdict,
}

/// A call's cluster-wide leases (its call slot and its media streams), as the
/// implementation holds them; dropping releases them all.
pub trait CallLease: Send + Sync {
    /// The call's latest offer opens `streams` media streams (a re-INVITE or UPDATE
    /// adding m-lines): lease those past what the call holds, checked against `limit`
    /// (0: none) WITHOUT waiting on Redis: against the tenant's cluster-wide count this
    /// node learned at its last heartbeat or admission plus its own leases since (its
    /// local share while Redis does not answer); the new leases reach Redis
    /// asynchronously. Fewer streams than held changes nothing (the leases are released
    /// with the call). The default: nothing to lease (tests' stand-ins).
    fn grow_streams(&mut self, streams: u32, limit: u32) -> Result<(), Refusal> {
        let _ = (streams, limit);
        Ok(())
    }
}

/// Holds a cluster lease; dropping it releases the lease (the implementation's drop).
pub struct LeaseGuard(pub Box<dyn CallLease>);

impl LeaseGuard {
    /// See [`CallLease::grow_streams`].
    pub fn grow_streams(&mut self, streams: u32, limit: u32) -> Result<(), Refusal> {
        self.0.grow_streams(streams, limit)
    }
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseGuard")
    }
}

/// Where answers go (installed by the driver; called from the cluster's own task).
pub type AnswerSink = Arc<dyn Fn(ClusterAnswer) + Send + Sync>;

/// Cluster-wide admission. Every request gets exactly one answer, within the configured
/// deadline plus scheduling (the implementation falls back to the local share itself).
pub trait ClusterAdmission: Send + Sync + fmt::Debug {
    /// Ask for a decision; never blocks.
    fn request(&self, req: ClusterRequest);
    /// Where answers go from now on.
    fn set_answer_sink(&self, sink: AnswerSink);
}

/// This node's view of the cluster, for `/readyz` and the usage API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Redis is not answering: admission uses this node's local share.
    pub fallback: bool,
    /// Gateway nodes with a live heartbeat (this one included; the last known count
    /// while Redis does not answer).
    pub live_nodes: u32,
}

/// A tenant's live leases on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCounts {
    pub calls: u32,
    pub streams: u32,
}

/// A tenant's live calls and streams cluster-wide, from Redis (`None`: Redis did not
/// answer).
pub type CountsFuture<'a> = Pin<Box<dyn Future<Output = Option<ClusterCounts>> + Send + 'a>>;

/// What the admin plane may see of cluster admission.
pub trait ClusterInfo: Send + Sync + fmt::Debug {
    fn status(&self) -> ClusterStatus;
    /// Calls of `tenant` this node holds a lease for.
    fn node_calls(&self, tenant: &TenantId) -> u32;
    /// Media streams of `tenant` this node holds a lease for.
    fn node_streams(&self, tenant: &TenantId) -> u32;
    /// Live calls and streams of `tenant` on every node, asked from Redis.
    fn cluster_counts<'a>(&'a self, tenant: &'a TenantId) -> CountsFuture<'a>;
}

/// Most streams one offer is counted for: sbc-media's bound on m-lines per SDP (an offer
/// with more is refused by the engine anyway).
pub const MAX_OFFER_STREAMS: u32 = 64;

/// Media streams an SDP offer opens: its m-lines with a non-zero port (RFC 3264 §5.1:
/// port 0 offers a stream disabled), at most [`MAX_OFFER_STREAMS`]. Bytes that are not
/// SDP count as no m-lines. Sans-IO and allocation-free: this only counts; the engine
/// parses and decides.
pub fn offer_streams(sdp: &[u8]) -> u32 {
    let mut n = 0u32;
    for line in sdp.split(|b| *b == b'\n') {
        let Some(rest) = line.strip_prefix(b"m=") else {
            continue;
        };
        // m=<media> <port>[/<count>] <proto> <fmt> ...
        let mut fields = rest.split(|b| *b == b' ').filter(|f| !f.is_empty());
        let port = fields
            .nth(1)
            .and_then(|p| p.split(|b| *b == b'/').next())
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.trim_end_matches('\r').parse::<u16>().ok());
        if port.is_some_and(|p| p != 0) {
            n += 1;
            if n >= MAX_OFFER_STREAMS {
                break;
            }
        }
    }
    n
}

/// One node's share of a cluster-wide limit when Redis cannot be asked: `limit / nodes`,
/// rounded down, so the shares of all live nodes never add up past the limit (a limit
/// below the node count gives some nodes nothing rather than the cluster too much).
pub fn share_of(limit: u32, live_nodes: u32) -> u32 {
    limit / live_nodes.max(1)
}

/// A node's share of a call rate and burst: `rate / nodes`, and `burst / nodes` rounded
/// down but at least one (a bucket needs a token to admit anything; the slack this adds
/// is at most one call per node and burst).
pub fn rate_share(rate: f64, burst: u32, live_nodes: u32) -> (f64, u32) {
    let n = live_nodes.max(1);
    (rate / f64::from(n), (burst / n).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_streams_counts_m_lines_with_a_port() {
        let two = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 49170 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\nm=video 51372 RTP/SAVP 96\r\n";
        assert_eq!(offer_streams(two), 2);
        // A disabled stream (port 0) opens nothing; LF-only lines count the same.
        let one = b"v=0\nm=audio 4000 RTP/AVP 0\nm=video 0 RTP/AVP 96\n";
        assert_eq!(offer_streams(one), 1);
        // port/count form, extra spaces.
        assert_eq!(offer_streams(b"m=audio  5004/2 RTP/AVP 0\r\n"), 1);
        // Not SDP, empty, malformed ports, an m= inside another line.
        assert_eq!(offer_streams(b""), 0);
        assert_eq!(offer_streams(b"hello world\r\n"), 0);
        assert_eq!(offer_streams(b"m=audio x RTP/AVP 0\r\nm=audio\r\n"), 0);
        assert_eq!(offer_streams(b"a=x m=audio 4000 RTP/AVP 0\r\n"), 0);
        assert_eq!(offer_streams(b"m=audio 70000 RTP/AVP 0\r\n"), 0);
        // Bounded.
        let many = "m=audio 4000 RTP/AVP 0\r\n".repeat(200);
        assert_eq!(offer_streams(many.as_bytes()), MAX_OFFER_STREAMS);
    }

    #[test]
    fn shares_never_add_up_past_the_limit() {
        for limit in 0..50u32 {
            for nodes in 0..8u32 {
                let s = share_of(limit, nodes);
                assert!(s * nodes.max(1) <= limit, "{limit}/{nodes}");
                assert!(limit - s * nodes.max(1) < nodes.max(1));
            }
        }
        assert_eq!(share_of(20, 3), 6);
        assert_eq!(share_of(20, 0), 20);
        assert_eq!(rate_share(30.0, 10, 3), (10.0, 3));
        assert_eq!(rate_share(30.0, 2, 3), (10.0, 1));
        assert_eq!(rate_share(30.0, 10, 0), (30.0, 10));
    }
}
