//! Hot standby wiring (`[cluster.standby]`, issue #16): starts sbc-cluster's
//! [`StandbyNode`] and connects it to the parts that produce and restore call state. The
//! media engine and the B2BUA hand it their parts ([`sbc_core::standby::ReplicaSink`]);
//! a takeover claims the peer's calls and installs them through the SIP server's
//! [`sbc_core::standby::CallInstaller`], whose media side is the engine's
//! [`sbc_core::standby::MediaTakeover`]; the admin plane reaches it through
//! [`sbc_core::standby::StandbyControl`]; takeovers and fencing go to the audit log.
//!
//! Owns: the order things are connected in. Must not: hold protocol or store logic.

use std::sync::Arc;

use anyhow::Context;
use sbc_cluster::standby::StandbyNode;
use sbc_cluster::RedisCluster;
use sbc_core::config::Config;
use sbc_core::standby::{SharedMediaTakeover, SharedReplicaSink};
use sbc_media::engine::MediaEngine;

/// A started standby node and what the SIP server's hooks take from it.
pub(crate) struct Standby {
    node: Arc<StandbyNode>,
    node_id: String,
    peer: Option<String>,
}

impl Standby {
    /// With `[cluster.standby]`: reads the cluster key file and starts the node (it
    /// connects to Redis in the background, never blocking the start), with the cluster's
    /// quota leases so a takeover moves them too; the media engine's parts go to it from
    /// now on. Without the section: `None`, nothing changes. A key file that is missing,
    /// unreadable or not 64 hex digits is an error naming the file.
    pub(crate) fn start(
        cfg: &Config,
        leases: Option<Arc<RedisCluster>>,
        media: Option<&MediaEngine>,
    ) -> anyhow::Result<Option<Standby>> {
        let Some(cluster) = cfg.cluster.as_ref() else {
            return Ok(None);
        };
        let Some(settings) = cluster.standby.as_ref() else {
            return Ok(None);
        };
        // The error names the key file and what is wrong with it.
        let node = StandbyNode::start(cluster, leases).context("[cluster.standby]")?;
        if let Some(m) = media {
            m.set_replica_sink(node.sink(), settings.index_refresh);
        }
        tracing::info!(
            event = "standby_started",
            node = %cluster.node_id,
            peer = settings.peer.as_deref().unwrap_or("-"),
            "hot standby: replicating this node's calls{}",
            settings
                .peer
                .as_deref()
                .map(|p| format!(", standing by for {p}"))
                .unwrap_or_default()
        );
        Ok(Some(Standby {
            node,
            node_id: cluster.node_id.clone(),
            peer: settings.peer.clone(),
        }))
    }

    /// Where the B2BUA puts its dialog parts.
    pub(crate) fn sink(&self) -> SharedReplicaSink {
        self.node.sink()
    }

    /// The SIP server restores claimed calls (media first, through the engine handed to
    /// its hooks by [`media_takeover`]) and drops fenced ones; takeovers and fencing are
    /// audited in `audit` (the admin plane's hash-chained log).
    pub(crate) fn connect(
        &self,
        server: &sbc_sip::server::ServerHandle,
        audit: Arc<dyn sbc_core::audit::AuditSink>,
    ) -> anyhow::Result<()> {
        self.node.set_installer(server.installer());
        let queue = sbc_core::audit::AuditQueue::start(audit)
            .context("starting the standby's audit writer")?;
        self.node.set_audit(Arc::new(queue));
        Ok(())
    }

    /// The start banner's line.
    pub(crate) fn announce(&self) {
        let role = match &self.peer {
            Some(p) => format!("replicating its calls and standing by for {p}"),
            None => "replicating its calls for its standby".to_string(),
        };
        println!(
            "  hot standby: node {}, {role} (`sbc-edge cluster status`)",
            self.node_id
        );
    }

    /// The admin plane's handle (takeover, status).
    pub(crate) fn control(&self) -> Arc<dyn sbc_core::standby::StandbyControl> {
        self.node.control()
    }
}

/// The engine as the media side of a takeover, when a standby runs.
pub(crate) fn media_takeover(
    standby: Option<&Standby>,
    media: Option<&MediaEngine>,
) -> Option<SharedMediaTakeover> {
    standby.and(media).map(MediaEngine::takeover)
}
