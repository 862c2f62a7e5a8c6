//! Hot standby, media side (issue #16): the engine's [`ReplicaPart::Media`] and
//! [`ReplicaPart::Indexes`] parts, and [`MediaTakeover`] (restore a claimed call's
//! streams on this node).
//!
//! Owns: when the parts are put (after each answer that commits streams, each re-offer,
//! each tap change; index reports from the workers), and the restore of a call from its
//! parts. Must not: put a part of a call after `delete` (the SIP side removes the call
//! from the store), wait on the sink, or show a key anywhere but the part's secret.

use std::sync::Arc;
use std::time::Duration;

use sbc_core::media::{CallRef, MediaError};
use sbc_core::standby::{MediaTakeover, SecretBytes, SharedMediaTakeover, SharedReplicaSink};
use sbc_core::tenant::TenantId;

use super::MediaEngine;

impl MediaEngine {
    /// Replicate every call's Media part (after each answer that commits streams, each
    /// tap change, each re-offer) and Indexes part (from the workers, at least every
    /// `index_refresh`) to `sink`.
    pub fn set_replica_sink(&self, sink: SharedReplicaSink, index_refresh: Duration) {
        let _ = (sink, index_refresh);
    }

    /// This engine as the media side of a takeover.
    pub fn takeover(&self) -> SharedMediaTakeover {
        Arc::new(self.clone())
    }
}

impl MediaTakeover for MediaEngine {
    fn restore(
        &self,
        call: CallRef,
        tenant: &TenantId,
        media: &[u8],
        secret: &SecretBytes,
        indexes: Option<&[u8]>,
    ) -> Result<(), MediaError> {
        let _ = (call, tenant, media, secret, indexes);
        Err(MediaError::NotAcceptable(
            "media restore is not built yet".into(),
        ))
    }
}
