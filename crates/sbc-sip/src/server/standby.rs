//! The hot standby's handle on the running SIP core ([`CallInstaller`], issue #16): it
//! hands claimed calls and fenced calls to the core task, which installs or drops them
//! between two inputs (`B2bua::install`, `B2bua::fence`).
//!
//! Owns: [`Installer`]. Must not: touch call state itself, or block the caller of
//! `fence` (a full core queue hands the command to a task that waits for room).

use sbc_core::media::CallRef;
use sbc_core::standby::{CallInstaller, InstallFuture, InstallRefusal, InstallReport, TakenCall};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::Event;

/// The [`CallInstaller`] over a running core.
pub(super) struct Installer {
    pub events: mpsc::Sender<Event>,
}

impl std::fmt::Debug for Installer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installer").finish_non_exhaustive()
    }
}

impl CallInstaller for Installer {
    fn install(&self, calls: Vec<TakenCall>) -> InstallFuture {
        let events = self.events.clone();
        Box::pin(async move {
            let refs: Vec<CallRef> = calls.iter().map(|c| c.call).collect();
            let (reply, answer) = oneshot::channel();
            let sent = events.send(Event::Install { calls, reply }).await.is_ok();
            match answer.await {
                Ok(report) if sent => report,
                _ => {
                    // The core has stopped: nothing here serves these calls.
                    warn!(
                        event = "takeover_refused",
                        calls = refs.len(),
                        "the SIP core has stopped: claimed calls not installed"
                    );
                    InstallReport {
                        installed: 0,
                        refused: refs
                            .into_iter()
                            .map(|c| (c, InstallRefusal::NoListener))
                            .collect(),
                    }
                }
            }
        })
    }

    fn fence(&self, calls: Vec<CallRef>) {
        match self.events.try_send(Event::Fence(calls)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                let events = self.events.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            let _ = events.send(ev).await;
                        });
                    }
                    Err(_) => {
                        warn!(
                            event = "fence_not_applied",
                            "core queue full and no runtime: fenced calls not dropped"
                        );
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
