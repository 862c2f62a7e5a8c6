//! Hot standby (DESIGN.md "More than one node", issue #16): the interfaces through which
//! the B2BUA and the media engine hand each call's state to replication, and through
//! which a standby that claimed a dead peer's calls gives them back to its own B2BUA and
//! media engine.
//!
//! Who owns what:
//! - **sbc-sip** owns the format of a call's dialog part ([`ReplicaPart::Dialog`]: per leg
//!   Call-ID, tags, parties, CSeq, remote target, route set, transport; listener, target,
//!   state) and restores it ([`CallInstaller`]).
//! - **sbc-media** owns the format of a call's media parts ([`ReplicaPart::Media`]: ports,
//!   suites, latches, taps, with the SRTP master keys in [`ReplicaUpdate::secret`];
//!   [`ReplicaPart::Indexes`]: per SSRC the rollover counter and last sequence number of
//!   every SRTP context, and the SRTCP indexes) and restores them ([`MediaTakeover`]).
//! - **sbc-cluster** owns the store: it writes each part to the call's Redis hash (the
//!   secret encrypted with the cluster key-encryption key, never in clear), appends the
//!   change to the node's stream, tails its peer's stream into a warm copy, claims the
//!   peer's calls with an owner + epoch compare-and-set, and fences calls another node
//!   claimed ([`StandbyControl`]).
//!
//! The parts are opaque bytes here: each owner versions its own format, and the store
//! neither parses nor logs them.
//!
//! Owns: the part names, the update and claimed-call types, the [`SecretBytes`] wrapper
//! and the four interfaces.
//! Must not: talk to Redis, serialize anyone's state, read a clock, or print a secret.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use zeroize::Zeroize;

use crate::cluster::{LeaseGuard, Ticket};
use crate::media::{CallRef, MediaError};
use crate::tenant::TenantId;

/// One replicated part of a call; each is one field of the call's Redis hash and is
/// rewritten whole by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaPart {
    /// The B2BUA's dialogs (sbc-sip). Written at every change of either leg's dialog
    /// state (tags, CSeq, remote target, route set, call state).
    Dialog,
    /// The media engine's streams (sbc-media): ports, suites, latches, taps; its SRTP
    /// master keys travel in [`ReplicaUpdate::secret`]. Written after each offer/answer
    /// and tap change.
    Media,
    /// The relay's SRTP progress (sbc-media): per SSRC of every context the rollover
    /// counter and highest sequence number, and the SRTCP indexes. Written when a
    /// stream's sequence number passes 0x8000 (before the wrap, so the standby never
    /// guesses a rollover counter) and at least every
    /// [`StandbySettings::index_refresh`].
    Indexes,
}

impl ReplicaPart {
    /// Every part, in restore order.
    pub const ALL: [ReplicaPart; 3] = [
        ReplicaPart::Dialog,
        ReplicaPart::Media,
        ReplicaPart::Indexes,
    ];

    /// The Redis hash field (and stream entry field) of this part.
    pub fn field(self) -> &'static str {
        match self {
            ReplicaPart::Dialog => "dialog",
            ReplicaPart::Media => "media",
            ReplicaPart::Indexes => "idx",
        }
    }

    /// The part named by `field`.
    pub fn from_field(field: &str) -> Option<ReplicaPart> {
        ReplicaPart::ALL.into_iter().find(|p| p.field() == field)
    }
}

/// Bytes that must never be stored in clear nor logged (SRTP master keys and salts):
/// zeroed on drop, and `Debug` shows only their length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// The latest state of one part of one call, as its owner serialized it.
#[derive(Debug, Clone)]
pub struct ReplicaUpdate {
    pub call: CallRef,
    pub tenant: TenantId,
    pub part: ReplicaPart,
    /// What may be stored in clear.
    pub public: Vec<u8>,
    /// What the store encrypts with the cluster key before it leaves the process
    /// ([`ReplicaPart::Media`]'s keys); `None` for parts without secrets.
    pub secret: Option<SecretBytes>,
}

/// Where a node's call-state changes go. Called from the SIP core's task and the media
/// engine's control side, never from the packet path: every method returns at once (a
/// bounded queue; a later update of the same call and part supersedes one not yet
/// written; when the queue is full the call is marked for a whole rewrite, counted and
/// logged, never blocked on).
pub trait ReplicaSink: Send + Sync + fmt::Debug {
    /// Replicate the latest state of one part.
    fn put(&self, update: ReplicaUpdate);
    /// The call ended here: its hash and leases go.
    fn remove(&self, call: CallRef);
    /// The call holds cluster quota leases under `ticket` (its
    /// [`crate::cluster::ClusterRequest::ticket`]): stored with the call so a standby
    /// that claims it moves those leases to itself. Without it a claimed call's leases
    /// expire on the dead node and the call is not counted cluster-wide.
    fn lease(&self, call: CallRef, ticket: Ticket) {
        let _ = (call, ticket);
    }
}

/// A call this node claimed from its dead peer, as the store held it (the secret already
/// decrypted with the cluster key).
#[derive(Debug)]
pub struct TakenCall {
    /// The call's number on the peer (its Redis key); the installer may give it a new
    /// local number if this node already uses that one.
    pub call: CallRef,
    pub tenant: TenantId,
    /// The ownership epoch this node now holds for the call.
    pub epoch: u64,
    pub dialog: Option<Vec<u8>>,
    /// The media part and its decrypted secret.
    pub media: Option<(Vec<u8>, SecretBytes)>,
    pub indexes: Option<Vec<u8>>,
    /// The call's cluster-wide quota leases, moved to this node (None without cluster
    /// admission); the installer attaches it to the restored call's admission.
    pub lease: Option<LeaseGuard>,
}

/// Why one claimed call could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstallRefusal {
    /// A part is missing or does not parse (a version this build does not read).
    BadRecord,
    /// The call's listener (by advertised address) or route target is not configured here.
    NoListener,
    /// Its media ports could not be bound on this node (address not local nor freebind).
    MediaPorts,
    /// Media restore failed otherwise (suite, keys).
    Media,
    /// The tenant is not configured here.
    UnknownTenant,
}

impl InstallRefusal {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallRefusal::BadRecord => "bad_record",
            InstallRefusal::NoListener => "no_listener",
            InstallRefusal::MediaPorts => "media_ports",
            InstallRefusal::Media => "media",
            InstallRefusal::UnknownTenant => "unknown_tenant",
        }
    }
}

/// What installing claimed calls did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// Calls now served by this node.
    pub installed: u32,
    /// Calls that could not be installed, by why (each logged by the installer).
    pub refused: Vec<(CallRef, InstallRefusal)>,
}

pub type InstallFuture = Pin<Box<dyn Future<Output = InstallReport> + Send>>;

/// The SIP side of a takeover (implemented by sbc-sip's server, which restores each
/// call's dialogs in the B2BUA and its media through [`MediaTakeover`]).
pub trait CallInstaller: Send + Sync + fmt::Debug {
    /// Restore `calls` so in-dialog requests for them are served here: dialogs with their
    /// CSeq, timers re-armed, the caller legs adopted by the tenant's next connection,
    /// media restored first (a call whose media fails is refused, not half-installed).
    fn install(&self, calls: Vec<TakenCall>) -> InstallFuture;
    /// Another node now owns these calls (fencing): drop them here without any SIP
    /// message and release their media; logged and audited by the caller.
    fn fence(&self, calls: Vec<CallRef>);
}

/// The media side of a takeover (implemented by sbc-media's engine).
pub trait MediaTakeover: Send + Sync + fmt::Debug {
    /// Re-create `call`'s streams from its replicated parts: the same ports bound on the
    /// same (virtual) address, SRTP contexts installed at the stored indexes, peers
    /// unlatched until the first packet that passes authentication, taps resumed.
    fn restore(
        &self,
        call: CallRef,
        tenant: &TenantId,
        media: &[u8],
        secret: &SecretBytes,
        indexes: Option<&[u8]>,
    ) -> Result<(), MediaError>;
}

/// What a standby reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StandbyStatus {
    /// The node this one stands by for.
    pub peer: String,
    /// Calls of the peer held in the warm copy.
    pub warm_calls: u32,
    /// Age of the newest change read from the peer's stream, in milliseconds (replication
    /// lag as this node sees it); `None` before the first.
    pub lag_ms: Option<u64>,
    /// Calls taken over by the last takeover, and how long it took in milliseconds.
    pub last_takeover: Option<TakeoverSummary>,
}

/// One takeover's outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TakeoverSummary {
    /// Calls claimed from the store (owner and epoch moved to this node).
    pub claimed: u32,
    /// Of those, installed.
    pub installed: u32,
    /// From the command to the last call installed.
    pub duration_ms: u64,
}

/// Why a takeover did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeoverError {
    /// No `[cluster.standby]` on this node.
    NotStandby,
    /// Redis did not answer (the claim is retried by the operator or the next notify).
    Store(String),
}

impl fmt::Display for TakeoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TakeoverError::NotStandby => {
                f.write_str("this node is not a standby ([cluster.standby] is not set)")
            }
            TakeoverError::Store(e) => write!(f, "the cluster store did not answer: {e}"),
        }
    }
}

impl std::error::Error for TakeoverError {}

pub type TakeoverFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TakeoverSummary, TakeoverError>> + Send + 'a>>;

/// The admin plane's view of the standby (implemented by sbc-cluster).
pub trait StandbyControl: Send + Sync + fmt::Debug {
    /// Claim every call of the peer (owner + epoch compare-and-set), install them through
    /// the [`CallInstaller`] and report. Idempotent: a second takeover claims nothing new.
    fn take_over(&self) -> TakeoverFuture<'_>;
    fn status(&self) -> StandbyStatus;
}

/// Shared handle types.
pub type SharedReplicaSink = Arc<dyn ReplicaSink>;
pub type SharedInstaller = Arc<dyn CallInstaller>;
pub type SharedMediaTakeover = Arc<dyn MediaTakeover>;

pub use crate::config::cluster::StandbySettings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_fields_round_trip_and_are_distinct() {
        for p in ReplicaPart::ALL {
            assert_eq!(ReplicaPart::from_field(p.field()), Some(p));
        }
        assert_eq!(ReplicaPart::from_field("owner"), None);
    }

    #[test]
    fn install_refusal_labels_are_the_catalogued_takeover_results() {
        use InstallRefusal::*;
        let all = [BadRecord, NoListener, MediaPorts, Media, UnknownTenant];
        // A new variant fails to compile here until it is listed above.
        for r in all {
            match r {
                BadRecord | NoListener | MediaPorts | Media | UnknownTenant => {}
            }
        }
        let mut want: Vec<&str> = vec!["installed"];
        want.extend(all.iter().map(|r| r.as_str()));
        assert_eq!(crate::metrics_catalog::TAKEOVER_RESULTS, want.as_slice());
    }

    #[test]
    fn secret_bytes_never_show_their_content() {
        let s = SecretBytes::new(b"very-secret-key".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("very"), "{shown}");
        assert!(shown.contains("15 bytes"), "{shown}");
        let u = ReplicaUpdate {
            call: CallRef(7),
            tenant: TenantId::from("t"),
            part: ReplicaPart::Media,
            public: vec![1],
            secret: Some(s),
        };
        assert!(!format!("{u:?}").contains("very"));
    }
}
