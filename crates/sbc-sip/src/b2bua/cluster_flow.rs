//! INVITEs waiting for a cluster-wide admission decision.
//!
//! With a [`ClusterAdmission`] set, a new call that passed local admission (its
//! [`sbc_core::admission::Admitted`] held) gets 100 Trying at once and is parked under a
//! [`Ticket`] while the cluster decides; the core goes on serving everything else. The
//! answer comes back as [`super::Input::Cluster`]: admitted → the lease joins the call's
//! `Admitted` and the call opens as without a cluster; refused → 503 with Retry-After as
//! a local refusal. The request carries the media streams the INVITE's SDP offer opens
//! (with media anchored), leased with the call; streams a re-INVITE or UPDATE adds later
//! are checked by the media engine's per-node quota only. A retransmitted INVITE of a parked call is absorbed; a CANCEL gets
//! 200 and the INVITE 487; a closed connection drops the call when its answer comes.
//!
//! Owns: the parked table. Must not: wait for the answer, or talk to Redis (the
//! implementation behind [`ClusterAdmission`] does, on its own task).

use std::collections::HashMap;
use std::time::Instant;

use sbc_core::cluster::{ClusterAnswer, ClusterRequest, ClusterVerdict, Ticket};
use tracing::{debug, info};

use super::pairs::ServerKey;
use super::request_flow::AdmittedInvite;
use super::responses::Refusal;
use super::{B2bua, ConnId, Output};
use crate::message::{response_to, SipMessage};

/// Most INVITEs parked at once. At the 50 ms default deadline this is 80,000 call
/// attempts per second of headroom; past it new calls get 503 rather than memory.
pub const MAX_PARKED: usize = 4096;

/// A new call waiting for the cluster.
#[derive(Debug)]
struct ParkedCall {
    invite: AdmittedInvite,
    key: Option<ServerKey>,
}

/// The parked table: by ticket, and by the INVITE's server-transaction key (for its
/// retransmissions and CANCEL).
#[derive(Debug, Default)]
pub(super) struct Parked {
    calls: HashMap<Ticket, ParkedCall>,
    by_key: HashMap<ServerKey, Ticket>,
}

impl Parked {
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    fn take(&mut self, ticket: Ticket) -> Option<ParkedCall> {
        let p = self.calls.remove(&ticket)?;
        if let Some(k) = &p.key {
            self.by_key.remove(k);
        }
        Some(p)
    }
}

impl B2bua {
    /// True if a retransmission of a parked INVITE (absorbed: 100 Trying went out).
    pub(super) fn parked_retransmission(&self, conn: ConnId, msg: &SipMessage) -> bool {
        ServerKey::of(conn, msg).is_some_and(|k| self.parked.by_key.contains_key(&k))
    }

    /// A CANCEL for a parked INVITE: 200 to it, 487 to the INVITE, the call dropped (its
    /// local slot now; its lease as soon as the answer comes). False if nothing parked
    /// matches.
    pub(super) fn cancel_parked(&mut self, conn: ConnId, cancel: &SipMessage) -> bool {
        let Some(ticket) = ServerKey::of(conn, cancel).and_then(|k| self.parked.by_key.get(&k))
        else {
            return false;
        };
        let ticket = *ticket;
        let Some(p) = self.parked.take(ticket) else {
            return false;
        };
        let ok = response_to(cancel, 200, "OK", None);
        self.outputs.push_back(Output::Send { conn, msg: ok });
        let tag = self.token();
        let resp = response_to(
            p.invite.request.msg(),
            487,
            "Request Terminated",
            Some(&tag),
        );
        self.outputs.push_back(Output::Send { conn, msg: resp });
        info!(tenant = %p.invite.tenant, "caller cancelled while admission was pending");
        self.report_usage(&p.invite.tenant);
        true
    }

    /// Park an INVITE that passed local admission and ask the cluster. Without a cluster
    /// the INVITE is handed back (the caller opens the call itself).
    pub(super) fn park_for_cluster(
        &mut self,
        invite: AdmittedInvite,
    ) -> Result<(), Box<AdmittedInvite>> {
        let Some(cluster) = self.cluster.clone() else {
            return Err(Box::new(invite));
        };
        let conn = invite.conn;
        let parked = ParkedCall {
            key: ServerKey::of(conn, invite.request.msg()),
            invite,
        };
        if self.parked.len() >= MAX_PARKED {
            metrics::counter!("sbc_admission_refused_total", "tenant" => parked.invite.tenant.to_string(), "cause" => "overload").increment(1);
            let r =
                Refusal::Unavailable(sbc_core::admission::QUOTA_RETRY_AFTER, "gateway overloaded");
            self.refuse(
                conn,
                parked.invite.request.msg(),
                &r,
                Some(&parked.invite.tenant),
            );
            return Ok(());
        }
        let limits = self
            .admission
            .usage(&parked.invite.tenant)
            .map(|u| u.limits)
            .unwrap_or_default();
        let mut ticket = Ticket(rand::Rng::gen::<u64>(&mut self.rng));
        while self.parked.calls.contains_key(&ticket) {
            ticket = Ticket(rand::Rng::gen::<u64>(&mut self.rng));
        }
        // 100 Trying at once: the caller stops retransmitting while the cluster decides.
        let trying = response_to(parked.invite.request.msg(), 100, "Trying", None);
        self.outputs.push_back(Output::Send { conn, msg: trying });
        let tenant = parked.invite.tenant.clone();
        let streams = self.offered_streams(&parked.invite);
        if let Some(k) = &parked.key {
            self.parked.by_key.insert(k.clone(), ticket);
        }
        self.parked.calls.insert(ticket, parked);
        cluster.request(ClusterRequest {
            ticket,
            tenant,
            limits,
            streams,
        });
        Ok(())
    }

    /// Media streams a new call's offer opens: its SDP's m-lines with a port (plain or
    /// the multipart's SDP part), 0 without media anchoring (the gateway holds no
    /// streams then) or when the body has no SDP.
    fn offered_streams(&self, invite: &AdmittedInvite) -> u32 {
        if self.media.is_none() {
            return 0;
        }
        // Classified before admission, never again.
        invite
            .request
            .body()
            .sdp()
            .map_or(0, sbc_core::cluster::offer_streams)
    }

    /// The cluster's answer for a parked INVITE.
    pub(super) fn on_cluster_answer(&mut self, now: Instant, answer: ClusterAnswer) {
        let Some(mut p) = self.parked.take(answer.ticket) else {
            // Cancelled meanwhile: dropping the answer releases its lease.
            debug!("cluster answer for a call no longer parked");
            return;
        };
        let t = p.invite.tenant.to_string();
        metrics::counter!("sbc_cluster_decisions_total", "mode" => answer.mode.as_str())
            .increment(1);
        if !self.conns.contains_key(&p.invite.conn) {
            debug!(tenant = %t, "caller gone while admission was pending");
            self.report_usage(&p.invite.tenant);
            return;
        }
        match answer.verdict {
            ClusterVerdict::Admit(lease) => {
                metrics::counter!("sbc_admission_admitted_total", "tenant" => t).increment(1);
                p.invite.admitted.hold(lease);
                self.open_admitted(now, p.invite, true);
            }
            ClusterVerdict::Refuse(refusal) => {
                // Undo the local admission's count: this call never started.
                metrics::counter!("sbc_admission_refused_total", "tenant" => t.clone(), "cause" => refusal.cause.as_str()).increment(1);
                info!(tenant = %t, cause = refusal.cause.as_str(), mode = answer.mode.as_str(), "call refused by cluster admission: 503");
                drop(p.invite.admitted);
                let r = Refusal::Unavailable(refusal.retry_after, refusal.cause.text());
                self.refuse(
                    p.invite.conn,
                    p.invite.request.msg(),
                    &r,
                    Some(&p.invite.tenant),
                );
                self.report_usage(&p.invite.tenant);
            }
        }
    }
}
