//! `sbc-edge ctl`: the admin API from the command line. Thin: arguments in, one request
//! through [`sbc_admin::client`], a table or the raw JSON out. No protocol logic here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sbc_admin::client::{AdminClient, ClientError, Endpoint, Request, TlsFiles};
use serde_json::Value;
use zeroize::Zeroizing;

/// The environment variable a token is read from when `--token-file` is not given.
pub const TOKEN_ENV: &str = "SBC_EDGE_TOKEN";

/// How to reach a gateway's admin plane (shared by `ctl` and `cluster`).
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The admin plane: http://HOST:PORT or https://HOST:PORT. The default is the admin
    /// address of the embedded default config (and of `[admin]` without `address`).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// A file holding the bearer token (its first line). Else $SBC_EDGE_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For an https:// admin plane: the CA that signed its certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A client certificate (PEM) for an admin plane that asks for one (`admin.client_ca`).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Print the API's JSON answer as it came, instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CtlArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// Calls in progress (the token's tenant only, for a tenant token).
    Calls {
        /// Only this tenant's calls.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// One call, by the id `calls` shows (the same id as in the logs).
    Call { id: String },
    /// A tenant's usage against its limits.
    Usage { tenant: String },
    /// A call's recording taps and their counters.
    Taps { call: String },
    /// A call's SIPREC recording sessions.
    Recordings { call: String },
    /// Start, stop, pause or resume a call's SIPREC recording (tenants in `api` mode;
    /// pause and resume in any mode).
    Recording {
        call: String,
        #[arg(value_parser = ["start", "stop", "pause", "resume"])]
        action: String,
    },
    /// Route targets: priority, weight, up/down, last change, failed pings, quarantine.
    Trunks {
        /// Only this tenant's targets.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Start draining: new calls are refused (503), running calls finish.
    Drain,
    /// Reload the config file, as SIGHUP does; prints what was applied.
    Reload,
    /// Set the log level (a level or a filter such as `info,sbc_sip=debug`).
    LogLevel { level: String },
}

impl CtlCommand {
    /// The request this command sends.
    pub fn request(&self) -> Request {
        match self {
            CtlCommand::Calls { tenant: None } => Request::get("/v1/calls"),
            CtlCommand::Calls { tenant: Some(t) } => {
                Request::get(format!("/v1/calls?tenant={}", encode(t)))
            }
            CtlCommand::Call { id } => Request::get(format!("/v1/calls/{}", encode(id))),
            CtlCommand::Usage { tenant } => {
                Request::get(format!("/v1/tenants/{}/usage", encode(tenant)))
            }
            CtlCommand::Taps { call } => Request::get(format!("/v1/calls/{}/taps", encode(call))),
            CtlCommand::Recordings { call } => {
                Request::get(format!("/v1/calls/{}/recordings", encode(call)))
            }
            CtlCommand::Recording { call, action } => Request::post(format!(
                "/v1/calls/{}/recordings/{}",
                encode(call),
                encode(action)
            )),
            CtlCommand::Trunks { tenant: None } => Request::get("/v1/trunks"),
            CtlCommand::Trunks { tenant: Some(t) } => {
                Request::get(format!("/v1/trunks?tenant={}", encode(t)))
            }
            CtlCommand::Drain => Request::post("/v1/drain"),
            CtlCommand::Reload => Request::post("/v1/reload"),
            CtlCommand::LogLevel { level } => {
                Request::put_json("/v1/log-level", &serde_json::json!({ "level": level }))
            }
        }
    }

    /// The answer, for a person.
    pub fn human(&self, v: &Value) -> String {
        match self {
            CtlCommand::Calls { .. } => calls_table(v),
            CtlCommand::Call { .. } => call_detail(v),
            CtlCommand::Usage { .. } => usage(v),
            CtlCommand::Taps { .. } => taps_table(v),
            CtlCommand::Recordings { .. } => recordings_table(v),
            CtlCommand::Recording { call, action } => {
                format!(
                    "{action} queued for call {call}: `ctl recordings {call}` shows the outcome"
                )
            }
            CtlCommand::Trunks { .. } => trunks_table(v),
            CtlCommand::Drain => {
                if v["already_draining"].as_bool() == Some(true) {
                    "draining (it already was)".to_string()
                } else {
                    "draining: new calls are refused, running calls finish".to_string()
                }
            }
            CtlCommand::Reload => format!("reloaded: {}", text(&v["detail"])),
            CtlCommand::LogLevel { level } => match v.get("level").and_then(Value::as_str) {
                Some(l) => format!("log level: {l}"),
                None => format!("log level: {level}"),
            },
        }
    }
}

/// Percent-encodes what is not safe in a path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~+".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `sbc-edge ctl`: 0 on a 2xx answer, 1 with the reason on stderr otherwise.
pub fn run(args: CtlArgs) -> ExitCode {
    let command = args.command;
    send_one(
        "sbc-edge ctl",
        &args.admin,
        &command.request(),
        |v: &Value| command.human(v),
    )
}

/// Sends `req` to the admin plane `admin` names and prints the answer (`human`, or the
/// JSON with `--json`): 0 on a 2xx answer, 1 with the reason on stderr (prefixed with
/// `program`) otherwise.
pub fn send_one(
    program: &str,
    admin: &AdminArgs,
    req: &Request,
    human: impl FnOnce(&Value) -> String,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(admin, req)) {
        Ok(v) => {
            if admin.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
                );
            } else {
                println!("{}", human(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(args: &AdminArgs, req: &Request) -> Result<Value, String> {
    let endpoint = Endpoint::parse(&args.admin).map_err(|e| e.to_string())?;
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let tls = TlsFiles {
        ca_pem: args.ca.as_ref().map(read).transpose()?,
        client_cert_pem: args.cert.as_ref().map(read).transpose()?,
        client_key_pem: args.key.as_ref().map(read).transpose()?.map(Zeroizing::new),
    };
    let token = token(args.token_file.as_ref())?;
    let client = AdminClient::new(endpoint, &tls, token).map_err(|e| e.to_string())?;
    client.json(req).await.map_err(|e| match e {
        ClientError::Status {
            status: 404,
            message,
        } if message == "no such endpoint" => {
            format!(
                "404: the gateway at {} does not know this command (an older version?)",
                client.endpoint()
            )
        }
        e => e.to_string(),
    })
}

/// The token from `--token-file` (first line, trimmed), else from [`TOKEN_ENV`].
fn token(file: Option<&PathBuf>) -> Result<Option<Zeroizing<String>>, String> {
    let text = match file {
        Some(p) => Zeroizing::new(
            std::fs::read_to_string(p).map_err(|e| format!("token file {}: {e}", p.display()))?,
        ),
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) => Zeroizing::new(t),
            Err(_) => return Ok(None),
        },
    };
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err("the admin token is empty".to_string());
    }
    Ok(Some(Zeroizing::new(first.to_string())))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(head.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn leg_counts(call: &Value, direction: &str) -> String {
    call["legs"]
        .as_array()
        .and_then(|legs| legs.iter().find(|l| l["direction"] == direction))
        .map(|l| {
            format!(
                "{}/{}/{}",
                text(&l["packets_received"]),
                text(&l["packets_sent"]),
                text(&l["packets_lost"])
            )
        })
        .unwrap_or_else(|| "-".to_string())
}

fn calls_table(v: &Value) -> String {
    let calls = v["calls"].as_array().cloned().unwrap_or_default();
    if calls.is_empty() {
        return "no calls".to_string();
    }
    let rows: Vec<Vec<String>> = calls
        .iter()
        .map(|c| {
            vec![
                text(&c["id"]),
                text(&c["tenant"]),
                text(&c["state"]),
                text(&c["start"]),
                text(&c["caller"]),
                text(&c["callee"]),
                leg_counts(c, "inbound"),
                leg_counts(c, "outbound"),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID",
            "TENANT",
            "STATE",
            "START",
            "CALLER",
            "CALLEE",
            "IN RX/TX/LOST",
            "OUT RX/TX/LOST",
        ],
        &rows,
    );
    out.push_str(&format!(
        "\n{} call{}",
        calls.len(),
        if calls.len() == 1 { "" } else { "s" }
    ));
    out
}

fn trunks_table(v: &Value) -> String {
    let trunks = v["trunks"].as_array().cloned().unwrap_or_default();
    if trunks.is_empty() {
        return "no route targets".to_string();
    }
    let rows: Vec<Vec<String>> = trunks
        .iter()
        .map(|t| {
            let checks = if t["health_checks"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            };
            vec![
                text(&t["tenant"]),
                text(&t["target"]),
                text(&t["priority"]),
                text(&t["weight"]),
                text(&t["state"]),
                checks.to_string(),
                text(&t["last_change"]),
                text(&t["consecutive_failures"]),
                text(&t["quarantine_remaining_secs"]),
            ]
        })
        .collect();
    table(
        &[
            "TENANT",
            "TARGET",
            "PRIORITY",
            "WEIGHT",
            "STATE",
            "CHECKS",
            "LAST CHANGE",
            "FAILED PINGS",
            "QUARANTINE S",
        ],
        &rows,
    )
}

fn call_detail(c: &Value) -> String {
    let mut out = vec![
        format!("id:      {}", text(&c["id"])),
        format!("tenant:  {}", text(&c["tenant"])),
        format!("state:   {}", text(&c["state"])),
        format!("start:   {}", text(&c["start"])),
        format!("caller:  {}", text(&c["caller"])),
        format!("callee:  {}", text(&c["callee"])),
    ];
    for dir in ["inbound", "outbound"] {
        out.push(format!(
            "{dir:<8} {} (packets received/sent/lost)",
            leg_counts(c, dir)
        ));
    }
    out.join("\n")
}

fn usage(u: &Value) -> String {
    let l = &u["limits"];
    [
        format!("tenant:          {}", text(&u["tenant"])),
        format!(
            "active calls:    {} of {}",
            text(&u["active_calls"]),
            text(&l["max_concurrent_calls"])
        ),
        format!(
            "pending INVITEs: {} of {}",
            text(&u["pending_invites"]),
            text(&l["max_pending_invites"])
        ),
        format!(
            "calls/second:    {} (burst {})",
            text(&l["calls_per_second"]),
            text(&l["call_burst"])
        ),
        format!("admitted total:  {}", text(&u["admitted_total"])),
        format!("refused total:   {}", text(&u["refused_total"])),
    ]
    .join("\n")
}

fn taps_table(v: &Value) -> String {
    let taps = v["taps"].as_array().cloned().unwrap_or_default();
    if taps.is_empty() {
        return "no taps".to_string();
    }
    let rows: Vec<Vec<String>> = taps
        .iter()
        .map(|t| {
            vec![
                text(&t["tap_id"]),
                text(&t["legs"]),
                text(&t["transport"]),
                text(&t["suite"]),
                text(&t["destination"]),
                text(&t["packets_sent"]),
                text(&t["packets_dropped"]),
                match (t["recording"].as_bool(), t["paused"].as_bool()) {
                    (Some(true), Some(true)) => "recording (paused)",
                    (Some(true), _) => "recording",
                    _ => "tap",
                }
                .to_string(),
            ]
        })
        .collect();
    table(
        &[
            "TAP",
            "LEGS",
            "TRANSPORT",
            "SUITE",
            "DESTINATION",
            "SENT",
            "DROPPED",
            "KIND",
        ],
        &rows,
    )
}

fn recordings_table(v: &Value) -> String {
    let list = v["recordings"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no recordings".to_string();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let streams: Vec<String> = r["streams"]
                .as_array()
                .map(|s| s.iter().map(text).collect())
                .unwrap_or_default();
            vec![
                text(&r["recording_id"]),
                text(&r["state"]),
                text(&r["srs"]),
                streams.join(","),
                text(&r["started"]),
                text(&r["failovers"]),
            ]
        })
        .collect();
    table(
        &[
            "RECORDING",
            "STATE",
            "SRS",
            "STREAMS",
            "STARTED",
            "FAILOVERS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let cases = [
            (CtlCommand::Calls { tenant: None }, "GET", "/v1/calls"),
            (
                CtlCommand::Calls {
                    tenant: Some("acme pbx".into()),
                },
                "GET",
                "/v1/calls?tenant=acme%20pbx",
            ),
            (
                CtlCommand::Call {
                    id: "00ab12".into(),
                },
                "GET",
                "/v1/calls/00ab12",
            ),
            (
                CtlCommand::Usage {
                    tenant: "demo".into(),
                },
                "GET",
                "/v1/tenants/demo/usage",
            ),
            (
                CtlCommand::Taps { call: "x/y".into() },
                "GET",
                "/v1/calls/x%2Fy/taps",
            ),
            (
                CtlCommand::Recordings {
                    call: "00ab".into(),
                },
                "GET",
                "/v1/calls/00ab/recordings",
            ),
            (
                CtlCommand::Recording {
                    call: "00ab".into(),
                    action: "pause".into(),
                },
                "POST",
                "/v1/calls/00ab/recordings/pause",
            ),
            (CtlCommand::Drain, "POST", "/v1/drain"),
            (CtlCommand::Reload, "POST", "/v1/reload"),
            (CtlCommand::Trunks { tenant: None }, "GET", "/v1/trunks"),
            (
                CtlCommand::Trunks {
                    tenant: Some("acme".into()),
                },
                "GET",
                "/v1/trunks?tenant=acme",
            ),
        ];
        for (cmd, method, path) in cases {
            let r = cmd.request();
            assert_eq!((r.method, r.path.as_str(), r.body), (method, path, None));
        }
    }

    #[test]
    fn log_level_request_follows_the_contract() {
        let r = CtlCommand::LogLevel {
            level: "info,sbc_sip=debug".into(),
        }
        .request();
        assert_eq!((r.method, r.path.as_str()), ("PUT", "/v1/log-level"));
        let body: Value = serde_json::from_slice(&r.body.expect("a body")).expect("JSON");
        assert_eq!(body, serde_json::json!({ "level": "info,sbc_sip=debug" }));
    }

    #[test]
    fn recording_tables() {
        let v = serde_json::json!({ "recordings": [{ "recording_id": "123456789abcdef1",
            "srs": "sips:srs@rec.example", "state": "paused", "streams": ["00000000000000a1",
            "00000000000000a2"], "started": "2025-01-01T00:00:00.000Z", "failovers": 1 }] });
        let t = CtlCommand::Recordings { call: "x".into() }.human(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("RECORDING"), "{t}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "123456789abcdef1",
                "paused",
                "sips:srs@rec.example",
                "00000000000000a1,00000000000000a2",
                "2025-01-01T00:00:00.000Z",
                "1"
            ],
            "{t}"
        );
        let empty = serde_json::json!({ "recordings": [] });
        assert_eq!(
            CtlCommand::Recordings { call: "x".into() }.human(&empty),
            "no recordings"
        );
        let taps = serde_json::json!({ "taps": [{ "tap_id": "00000000000000a1",
            "legs": "caller", "transport": "srtp", "suite": "AES_CM_128_HMAC_SHA1_80",
            "destination": "192.0.2.7:4000", "packets_sent": 5, "packets_dropped": 0,
            "recording": true, "paused": true }] });
        let t = CtlCommand::Taps { call: "x".into() }.human(&taps);
        assert!(
            t.lines()
                .nth(1)
                .is_some_and(|l| l.ends_with("recording (paused)")),
            "{t}"
        );
    }

    #[test]
    fn tables() {
        let v = serde_json::json!({ "calls": [{
            "id": "00ab12cd34ef5678", "tenant": "demo", "state": "established",
            "start": "2025-01-01T00:00:00Z", "caller": "+1555****34", "callee": "+1555****43",
            "legs": [
                { "direction": "inbound", "packets_received": 10, "packets_sent": 9, "packets_lost": 1 },
                { "direction": "outbound", "packets_received": 9, "packets_sent": 10, "packets_lost": 0 }
            ]
        }]});
        let t = CtlCommand::Calls { tenant: None }.human(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID"), "{t}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "00ab12cd34ef5678",
                "demo",
                "established",
                "2025-01-01T00:00:00Z",
                "+1555****34",
                "+1555****43",
                "10/9/1",
                "9/10/0"
            ],
            "{t}"
        );
        // Columns line up: each row's second column starts where the header's does.
        assert_eq!(lines[0].find("TENANT"), lines[1].find("demo"), "{t}");
        assert_eq!(lines[2], "1 call");
        assert_eq!(
            CtlCommand::Calls { tenant: None }.human(&serde_json::json!({ "calls": [] })),
            "no calls"
        );
        let u = serde_json::json!({ "tenant": "demo", "active_calls": 3, "pending_invites": 1,
            "admitted_total": 7, "refused_total": 2, "limits": { "calls_per_second": 10.0,
            "call_burst": 20, "max_concurrent_calls": 100, "max_pending_invites": 50,
            "requests_per_second_per_connection": 100.0 } });
        let t = CtlCommand::Usage {
            tenant: "demo".into(),
        }
        .human(&u);
        assert!(t.contains("active calls:    3 of 100"), "{t}");
        assert!(t.contains("refused total:   2"), "{t}");
        let v = serde_json::json!({ "trunks": [{ "tenant": "acme", "target": "sips:a:5061",
            "priority": 10, "weight": 60, "state": "down", "health_checks": true,
            "last_change": null, "consecutive_failures": 3, "quarantine_remaining_secs": 0 }] });
        let t = CtlCommand::Trunks { tenant: None }.human(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TENANT"), "{t}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            vec![
                "acme",
                "sips:a:5061",
                "10",
                "60",
                "down",
                "on",
                "-",
                "3",
                "0"
            ],
            "{t}"
        );
    }
}
