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
        None => match run(cli.config, cli.log_json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sbc-edge: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logging to stderr: `RUST_LOG` if set, else `logging.level`, else `info`; JSON lines if
/// `--log-json` or `logging.format = "json"`. Timestamps are RFC 3339 in UTC.
fn init_logging(level: Option<&str>, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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

fn run(config: Option<PathBuf>, log_json: bool) -> anyhow::Result<()> {
    let cfg = match &config {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display()))?,
        None => Config::embedded_default().context("embedded default config")?,
    };
    init_logging(cfg.logging.level.as_deref(), log_json || cfg.logging.json);
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
        println!("Ctrl-C or SIGTERM stops it; SIGHUP reloads limits from the config file.");
        reload_until_shutdown(&server, config.as_deref()).await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

/// Serve SIGHUP (reload) until SIGTERM or Ctrl-C.
async fn reload_until_shutdown(
    server: &sbc_sip::server::ServerHandle,
    path: Option<&std::path::Path>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            shutdown_signal().await;
            return;
        };
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = hup.recv() => reload(server, path).await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        let _ = server;
        shutdown_signal().await;
    }
}

/// Reload the config file; a config that does not validate is refused and the running one
/// kept.
async fn reload(server: &sbc_sip::server::ServerHandle, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::warn!(
            event = "reload_skipped",
            "SIGHUP: running on the embedded default, nothing to reload"
        );
        return;
    };
    match Config::load(path) {
        Ok(cfg) => {
            tracing::info!(event = "reload", config = %path.display(), "SIGHUP: reloading limits, flood guard and overload settings (listeners, recognition and routes need a restart)");
            if let Err(e) = server.reload(Arc::new(cfg)).await {
                tracing::error!(event = "reload_failed", error = %e, "reload not applied");
            }
        }
        Err(e) => {
            tracing::error!(event = "reload_rejected", config = %path.display(), error = %e, "SIGHUP: config invalid; keeping the running one");
        }
    }
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
