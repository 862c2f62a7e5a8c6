//! sbc-edge: command line, wiring and signals. No protocol logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sbc_core::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "sbc-edge",
    version,
    about = "Session border controller: SIP-over-TLS B2BUA"
)]
struct Cli {
    /// Configuration file (TOML). Without it, an embedded demo default is used: loopback
    /// listener, a self-signed certificate made at start, one tenant `demo`.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a configuration file and exit (non-zero with the reason if it is invalid).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(cfg) => {
                println!("{}: OK", file.display());
                println!("{}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid: {e}", file.display());
                ExitCode::from(2)
            }
        },
        None => match run(cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sbc-edge: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    // The default timer prints RFC 3339 timestamps in UTC.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = match &config {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display()))?,
        None => Config::embedded_default().context("embedded default config")?,
    };
    let cfg = Arc::new(cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let server = sbc_sip::server::start(cfg.clone())
            .await
            .context("starting SIP server")?;
        match &config {
            Some(path) => println!("sbc-edge: config {}", path.display()),
            None => println!(
                "sbc-edge: embedded default config (demo; pass --config FILE for real use)"
            ),
        }
        for (listener, addr) in cfg.listeners.iter().zip(&server.sip_addrs) {
            println!("  SIP over TLS listener {:?}: sips:{addr}", listener.name);
        }
        println!("{}", cfg.summary());
        println!("Ctrl-C or SIGTERM stops it.");
        shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
