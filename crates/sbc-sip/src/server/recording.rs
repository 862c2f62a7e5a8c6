//! The admin plane's handle on SIPREC recording ([`RecordingControl`]): reads the status
//! table the core publishes, and hands commands to the core as [`Input::Recording`].
//!
//! Owns: [`Control`] and the building of each tenant's [`Recorder`] from the config and the
//! route table (whose recorder lists carry the SRS targets' connector ids). Must not:
//! block (a full core queue refuses the command) or touch a call's state itself.

use std::collections::HashMap;
use std::sync::Arc;

use sbc_core::config::{Config, RecordingMode};
use sbc_core::media::CallRef;
use sbc_core::recording::{RecordingCommand, RecordingControl, RecordingError, RecordingStatus};
use sbc_core::tenant::TenantId;
use tokio::sync::mpsc;

use super::Event;
use crate::b2bua::recording::{Recorder, RecordingBoard};
use crate::b2bua::Input;
use crate::routing::{Candidate, RouteTable};

/// Each tenant's recording settings with its SRS targets as `routes` reaches them.
pub(super) fn recorders(config: &Config, routes: &RouteTable) -> HashMap<TenantId, Recorder> {
    config
        .tenants
        .iter()
        .filter_map(|t| {
            let settings = t.recording.clone()?;
            let srs = routes
                .recorders(&t.id)
                .iter()
                .map(|r| Candidate {
                    target: r.target,
                    host_port: r.host_port.clone(),
                    transport: r.transport,
                })
                .collect();
            Some((t.id.clone(), Recorder { settings, srs }))
        })
        .collect()
}

/// The admin plane's [`RecordingControl`].
pub(super) struct Control {
    pub board: Arc<RecordingBoard>,
    pub events: mpsc::Sender<Event>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingControl").finish_non_exhaustive()
    }
}

impl RecordingControl for Control {
    fn recordings(&self, call: CallRef) -> Option<Vec<RecordingStatus>> {
        self.board.get(call)
    }

    fn command(&self, call: CallRef, cmd: RecordingCommand) -> Result<(), RecordingError> {
        let Some(mode) = self.board.mode(call) else {
            return Err(RecordingError::UnknownCall(call));
        };
        if matches!(cmd, RecordingCommand::Start | RecordingCommand::Stop)
            && mode != RecordingMode::Api
        {
            return Err(RecordingError::NotApiMode);
        }
        self.events
            .try_send(Event::Core(Input::Recording { call, cmd }))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    RecordingError::Unavailable("the signaling core is busy")
                }
                mpsc::error::TrySendError::Closed(_) => {
                    RecordingError::Unavailable("the signaling core has stopped")
                }
            })
    }
}
