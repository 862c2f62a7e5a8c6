//! Takeover: claim the dead peer's calls and hand them to the installer.
//!
//! One [`script::CLAIM`] moves every call the peer still owns to this node (owner and
//! epoch compare-and-set, set membership, quota leases) and returns each call's parts
//! read in the same atomic step: the takeover installs what the store held at the claim,
//! whatever the warm copy's lag (the warm copy serves status and the operator's view of
//! what a takeover would claim). A call another node claimed first is not returned, so a
//! second takeover, or a second node claiming at the same time, gets nothing: exactly one
//! owner per call.
//!
//! Owns: the claim's connection, the takeover summary, its log line, metrics and audit.
//! Must not: install anything itself (the [`sbc_core::standby::CallInstaller`] does), or
//! log a secret (a secret that does not open is reported by call id only).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_core::audit::ClusterEvent;
use sbc_core::cluster::Ticket;
use sbc_core::standby::{
    InstallReport, ReplicaPart, SecretBytes, TakenCall, TakeoverError, TakeoverSummary,
};
use sbc_core::tenant::TenantId;
use tracing::{error, info, warn};

use super::script::{self, call_ref, SECRET_FIELD};
use super::tailer::fields;
use super::writer::{LiveCall, Stored};
use super::{lock, Node};
use crate::resp::Value;
use crate::{connect_with, run_scripts, with_deadline, ClusterError};

/// Deadline of the claim script: it moves every call of the peer in one atomic step.
/// Measured: 2 000 calls in 22-40 ms of Redis time (11-20 µs a call; `cargo test -p
/// sbc-cluster --test standby_store takeover_of_many_calls -- --nocapture`, Redis'
/// SLOWLOG), so 5 s covers well over 100 000 calls plus connecting.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// One call as the claim script returned it.
struct Claimed {
    id: String,
    epoch: u64,
    /// Stream leases moved (`None`: the call held no lease ticket).
    streams: Option<u32>,
    fields: HashMap<String, Vec<u8>>,
}

fn parse(v: &[Value]) -> Vec<Claimed> {
    let Some(list) = v.first().and_then(Value::array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|c| {
            let [id, epoch, streams, hash] = c.array()? else {
                return None;
            };
            Some(Claimed {
                id: id.text()?,
                epoch: u64::try_from(epoch.int()?).ok()?,
                streams: u32::try_from(streams.int()?).ok(),
                fields: fields(hash),
            })
        })
        .collect()
}

async fn claim(node: &Node, peer: &str) -> Result<Vec<Claimed>, ClusterError> {
    let me = &node.settings.node_id;
    let keys = vec![
        node.keys.calls(peer),
        node.keys.calls(me),
        node.keys.stream(me),
    ];
    let args = vec![
        me.clone(),
        peer.to_string(),
        node.keys.call_prefix(),
        node.keys.prefix(),
        node.standby.stream_maxlen.to_string(),
    ];
    with_deadline(CLAIM_TIMEOUT, async {
        let mut link = connect_with(&node.settings, &script::CLAIMER).await?;
        let v = run_scripts(&mut link, 0, &[(keys, args)]).await?;
        Ok(parse(&v))
    })
    .await
}

/// A claimed call for the installer, and the book's record of it.
fn taken(node: &Node, c: Claimed) -> Option<(TakenCall, LiveCall)> {
    let Some(call) = call_ref(&c.id) else {
        warn!(event = "standby_claim_bad_id", id = %c.id, "claimed call with an unreadable id skipped");
        return None;
    };
    let f = &c.fields;
    let tenant = TenantId::from(
        f.get("tenant")
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or_default(),
    );
    let secret = match f.get(SECRET_FIELD).filter(|s| !s.is_empty()) {
        None => Some(SecretBytes::default()),
        Some(blob) => {
            let aad = node.keys.aad(&c.id, ReplicaPart::Media.field());
            match node.kek.open(&aad, blob) {
                Ok(s) => Some(s),
                Err(e) => {
                    metrics::counter!("sbc_cluster_secret_open_failures_total").increment(1);
                    error!(event = "standby_secret_unreadable", call = %c.id, error = %e, "claimed call's SRTP keys do not open with this node's cluster key: its media cannot be restored");
                    None
                }
            }
        }
    };
    let part = |p: ReplicaPart| f.get(p.field()).cloned();
    let media = match (part(ReplicaPart::Media), secret) {
        (Some(m), Some(s)) => Some((m, s)),
        _ => None,
    };
    let ticket = f
        .get("lease")
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| u64::from_str_radix(t, 16).ok())
        .map(Ticket);
    let lease = match (&node.leases, ticket, c.streams) {
        (Some(l), Some(t), Some(streams)) => Some(l.adopt_lease(&tenant, t, streams)),
        _ => None,
    };
    let stored = [
        part(ReplicaPart::Dialog).map(|public| Stored {
            public,
            secret: None,
        }),
        media.as_ref().map(|(public, s)| Stored {
            public: public.clone(),
            secret: Some(s.clone()),
        }),
        part(ReplicaPart::Indexes).map(|public| Stored {
            public,
            secret: None,
        }),
    ];
    let live = LiveCall::claimed(c.id.clone(), tenant.clone(), stored, ticket, c.epoch);
    let t = TakenCall {
        call,
        tenant,
        epoch: c.epoch,
        dialog: part(ReplicaPart::Dialog),
        media,
        indexes: part(ReplicaPart::Indexes),
        lease,
    };
    Some((t, live))
}

/// [`sbc_core::standby::StandbyControl::take_over`].
pub(crate) async fn take_over(node: Arc<Node>) -> Result<TakeoverSummary, TakeoverError> {
    let peer = node.standby.peer.clone().ok_or(TakeoverError::NotStandby)?;
    let _one = node.taking_over.lock().await;
    let started = Instant::now();
    let claimed = claim(&node, &peer).await.map_err(|e| {
        error!(event = "standby_takeover_failed", peer = %peer, error = %e, "takeover could not claim the peer's calls");
        TakeoverError::Store(e.to_string())
    })?;
    let mut calls = Vec::with_capacity(claimed.len());
    let mut adopted = std::collections::HashSet::new();
    {
        let mut warm = node.warm();
        for c in &claimed {
            warm.remove(&c.id);
        }
        metrics::gauge!("sbc_cluster_warm_calls").set(warm.len() as f64);
    }
    for c in claimed {
        let Some((t, live)) = taken(&node, c) else {
            continue;
        };
        if node.book().adopt(t.call, live) {
            adopted.insert(t.call);
        } else {
            warn!(event = "standby_claim_renumbered", call = %t.call, "a claimed call has the number of a call of this node: its later updates are replicated under a new id");
        }
        calls.push(t);
    }
    let n = u32::try_from(calls.len()).unwrap_or(u32::MAX);
    let report = match (calls.is_empty(), node.installer()) {
        (true, _) => InstallReport::default(),
        (false, Some(i)) => i.install(calls).await,
        (false, None) => {
            error!(
                event = "standby_no_installer",
                calls = n,
                "claimed calls but no call installer is set: they are not served"
            );
            InstallReport::default()
        }
    };
    if !report.refused.is_empty() {
        // Refused calls are dead: out of the store (their leases went with their
        // TakenCall). Only those the book adopted: another is this node's own call.
        let mut book = node.book();
        for (call, _) in report.refused.iter().filter(|(c, _)| adopted.contains(c)) {
            book.remove(*call);
        }
        drop(book);
        node.wake.notify_one();
    }
    let summary = TakeoverSummary {
        claimed: n,
        installed: report.installed,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    record(&node, &peer, &summary, report.refused.len(), started);
    Ok(summary)
}

/// A takeover's metrics, log line, audit event and status.
fn record(node: &Node, peer: &str, summary: &TakeoverSummary, refused: usize, started: Instant) {
    metrics::histogram!("sbc_cluster_takeover_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("sbc_cluster_calls_taken_over_total").increment(u64::from(summary.installed));
    info!(
        event = "standby_takeover",
        peer = %peer,
        claimed = summary.claimed,
        installed = summary.installed,
        refused,
        duration_ms = summary.duration_ms,
        "took over the peer's calls"
    );
    node.audit(
        ClusterEvent::TakenOver,
        summary.installed,
        format!(
            "claimed:{},installed:{},refused:{refused},ms:{}",
            summary.claimed, summary.installed, summary.duration_ms
        ),
    );
    *lock(&node.last_takeover) = Some(summary.clone());
}
