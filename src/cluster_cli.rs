//! `sbc-edge cluster takeover|status`: the hot standby (issue #16) from the command line,
//! through the admin API (`POST /v1/cluster/takeover`, `GET /v1/cluster/standby`).
//! keepalived's `notify_master` hook runs `sbc-edge cluster takeover` on the node that
//! just got the virtual IP (deploy/cluster/sbc-edge-notify.sh).
//!
//! Exit codes: 0 when the gateway answered 2xx; 1 with the reason on stderr otherwise
//! (not a standby: 409; Redis not answering: 503; unreachable; bad token). A takeover that
//! installed fewer calls than it claimed still exits 0 (the calls were claimed; each
//! refused one is logged by the gateway) and says so on stderr.
//!
//! Owns: the arguments and the text. Must not: hold takeover logic (the gateway's
//! sbc-cluster does it).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use sbc_admin::client::Request;
use serde_json::Value;

use crate::ctl::{send_one, AdminArgs};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Take over the peer's calls now (the standby's claim + install; idempotent). Run by
    /// keepalived's notify_master hook; by hand to fail over without keepalived.
    Takeover {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The standby's state: the peer, its calls held warm, replication lag, last takeover.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

const PROGRAM: &str = "sbc-edge cluster";

/// Runs `sbc-edge cluster ...`.
pub fn run(args: ClusterArgs) -> ExitCode {
    match &args.command {
        ClusterCommand::Takeover { admin } => send_one(
            PROGRAM,
            admin,
            &Request::post("/v1/cluster/takeover"),
            |v: &Value| {
                let (text, refused) = takeover_text(v);
                if refused > 0 {
                    eprintln!(
                        "{PROGRAM}: {refused} claimed call(s) could not be installed: see the gateway's log (event takeover_refused)"
                    );
                }
                text
            },
        ),
        ClusterCommand::Status { admin } => send_one(
            PROGRAM,
            admin,
            &Request::get("/v1/cluster/standby"),
            status_text,
        ),
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// One line for a takeover summary, and how many claimed calls were refused.
fn takeover_text(v: &Value) -> (String, u64) {
    let (claimed, installed, ms) = (
        num(&v["claimed"]),
        num(&v["installed"]),
        num(&v["duration_ms"]),
    );
    let refused = claimed.saturating_sub(installed);
    let text = if claimed == 0 {
        format!("takeover: nothing to claim (the peer has no calls, or they are taken already); {ms} ms")
    } else {
        format!("takeover: {installed} of {claimed} claimed calls installed in {ms} ms")
    };
    (text, refused)
}

fn status_text(v: &Value) -> String {
    let peer = v["peer"].as_str().map_or(
        "none (this node only replicates its own calls)".to_string(),
        str::to_string,
    );
    let lag = match v["lag_ms"].as_u64() {
        Some(ms) => format!("{ms} ms"),
        None => "- (nothing read from the peer's stream yet)".to_string(),
    };
    let last = if v["last_takeover"].is_null() {
        "never".to_string()
    } else {
        takeover_text(&v["last_takeover"])
            .0
            .trim_start_matches("takeover: ")
            .to_string()
    };
    [
        format!("peer:          {peer}"),
        format!("warm calls:    {}", num(&v["warm_calls"])),
        format!("lag:           {lag}"),
        format!("last takeover: {last}"),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        let v = serde_json::json!({"claimed": 3, "installed": 2, "refused": 1, "duration_ms": 41});
        assert_eq!(
            takeover_text(&v),
            (
                "takeover: 2 of 3 claimed calls installed in 41 ms".to_string(),
                1
            )
        );
        let none =
            serde_json::json!({"claimed": 0, "installed": 0, "refused": 0, "duration_ms": 1});
        assert!(takeover_text(&none).0.contains("nothing to claim"));
        let s = status_text(
            &serde_json::json!({"peer": "gw-a", "warm_calls": 3, "lag_ms": 12,
            "last_takeover": v}),
        );
        assert_eq!(
            s,
            "peer:          gw-a\nwarm calls:    3\nlag:           12 ms\nlast takeover: 2 of 3 claimed calls installed in 41 ms"
        );
        let s = status_text(
            &serde_json::json!({"peer": null, "warm_calls": 0, "lag_ms": null,
            "last_takeover": null}),
        );
        assert!(
            s.contains("peer:          none") && s.contains("last takeover: never"),
            "{s}"
        );
    }
}
