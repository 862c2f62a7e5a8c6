//! `sbc-failover-peer caller|callee|tap-sink`: the two ends of the hot-standby failover test and
//! bench (tests/cluster_failover.rs, benches/cluster_failover/run.sh), run inside network
//! namespaces. Command-line wiring only: the peers are `sbc_probe::failover`.
//!
//! Commands come one per line on stdin (`reinvite`, `bye`, `stop`); events and the final
//! report go to stdout as one JSON object per line. Exit code 0 when the peer ran to its
//! end (the report says how the call went), 1 when it could not start, 2 for bad
//! arguments.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sbc_probe::failover::{self, callee::CalleeOptions, caller::CallerOptions, Command};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "The caller and callee of the hot-standby failover test (test tool)")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// A platform's SIPS trunk client: calls through the gateway, reconnects after a failover.
    Caller(CallerArgs),
    /// A TLS SIP UAS the gateway routes to.
    Callee(CalleeArgs),
    /// A recording engine's UDP socket for a clear-RTP tap: counts the copies.
    TapSink(TapSinkArgs),
}

#[derive(clap::Args, Debug)]
struct TapSinkArgs {
    /// UDP address the tap sends to, IP:PORT.
    #[arg(long)]
    listen: SocketAddr,
    /// Seconds before the sink stops by itself.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
}

#[derive(clap::Args, Debug)]
struct CallerArgs {
    /// The gateway's SIPS listener (the VIP), IP:PORT.
    #[arg(long)]
    gateway: SocketAddr,
    /// Name verified in the gateway's certificate.
    #[arg(long)]
    server_name: String,
    /// CA (PEM) of the gateway's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Client certificate (PEM) recognising the tenant.
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Called number.
    #[arg(long, default_value = "15551230000")]
    number: String,
    /// The SRTP suite offered.
    #[arg(long, default_value = "AES_CM_128_HMAC_SHA1_80")]
    suite: String,
    /// Address of the media socket (this namespace's address).
    #[arg(long)]
    media_ip: IpAddr,
    /// Seconds before the caller stops by itself.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// CRLF keep-alive interval in ms.
    #[arg(long, default_value_t = 200)]
    keepalive_ms: u64,
    /// First RTP sequence number (default: random below 0x8000).
    #[arg(long)]
    first_seq: Option<u16>,
}

#[derive(clap::Args, Debug)]
struct CalleeArgs {
    /// TLS SIP listener, IP:PORT.
    #[arg(long)]
    listen: SocketAddr,
    /// Certificate (PEM) presented to the gateways.
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Address of the media socket.
    #[arg(long)]
    media_ip: IpAddr,
    /// Milliseconds between the 180 and the 200.
    #[arg(long, default_value_t = 0)]
    ring_ms: u64,
    /// Seconds before the callee stops by itself.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// First RTP sequence number (default: random below 0x8000).
    #[arg(long)]
    first_seq: Option<u16>,
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| p.display().to_string())
}

/// Feeds stdin lines to the peer; unknown lines are reported on stderr and skipped.
fn commands() -> mpsc::Receiver<Command> {
    let (tx, rx) = mpsc::channel(8);
    // A thread, not a task: the workspace's tokio has no `io-std`.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            match Command::parse(&line) {
                Some(c) => {
                    if tx.blocking_send(c).is_err() {
                        return;
                    }
                }
                None => eprintln!("sbc-failover-peer: unknown command {line:?}"),
            }
        }
    });
    rx
}

fn print(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

async fn caller(a: CallerArgs) -> anyhow::Result<()> {
    let tls =
        sbc_probe::tls::client_config(&read(&a.ca)?, Some((&read(&a.cert)?, &read(&a.key)?)))?;
    let suite = a
        .suite
        .parse()
        .map_err(|_| anyhow::anyhow!("--suite {:?} is not a suite we implement", a.suite))?;
    let opts = CallerOptions {
        gateway: a.gateway,
        server_name: a.server_name,
        tls,
        called: a.number,
        suite,
        media_ip: a.media_ip,
        max_run: Duration::from_secs(a.max_secs),
        keepalive: Duration::from_millis(a.keepalive_ms.max(10)),
        first_seq: a.first_seq,
    };
    failover::caller::run(opts, commands(), &mut print).await?;
    Ok(())
}

async fn callee(a: CalleeArgs) -> anyhow::Result<()> {
    let tls = sbc_probe::tls::server_config(&read(&a.cert)?, &read(&a.key)?)?;
    let listener =
        std::net::TcpListener::bind(a.listen).with_context(|| format!("listen on {}", a.listen))?;
    let opts = CalleeOptions {
        tls,
        media_ip: a.media_ip,
        ring: Duration::from_millis(a.ring_ms),
        max_run: Duration::from_secs(a.max_secs),
        first_seq: a.first_seq,
    };
    print(serde_json::json!({"event": "listening", "addr": a.listen.to_string()}));
    failover::callee::run(listener, opts, commands(), &mut print).await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sbc-failover-peer: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = rt.block_on(async {
        match cli.role {
            Role::Caller(a) => caller(a).await,
            Role::Callee(a) => callee(a).await,
            Role::TapSink(a) => {
                let max = Duration::from_secs(a.max_secs);
                print(serde_json::json!({"event": "listening", "addr": a.listen.to_string()}));
                Ok(failover::sink::run(a.listen, max, commands(), &mut print).await?)
            }
        }
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sbc-failover-peer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
