//! sbc-edge: command line, wiring and signals. No protocol logic lives here.

mod cluster_cli;
mod ctl;
mod demo;
mod probe_cli;
mod standby;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sbc_admin::{AdminConfig, AdminState, AuditLog};
use sbc_core::config::Config;
use sbc_core::media::MediaControl;
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_media::engine::{MediaEngine, MediaSettings};
use sbc_sip::server::{Hooks, ServerHandle};

mod logging;
mod reload;
mod systemd;
mod telemetry;

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
    /// The embedded default's demo directory (its CA, the state `call` reads, the operator
    /// token) [default: $XDG_RUNTIME_DIR/sbc-edge-demo, else /tmp/sbc-edge-demo-UID].
    #[arg(long, global = true)]
    demo_dir: Option<PathBuf>,
    /// Embedded default only: bind its SIP listener, demo endpoint and admin plane on free
    /// ports instead of 5061, 5062 and 9090 (`call` finds them in the demo directory).
    #[arg(long)]
    demo_any_port: bool,
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
    /// Talk to a running gateway's admin API (calls, usage, taps, drain, reload, log level).
    Ctl(ctl::CtlArgs),
    /// Hot standby through a running gateway's admin API: `takeover` (keepalived's
    /// notify_master hook) and `status`.
    Cluster(cluster_cli::ClusterArgs),
    /// Place one SRTP call through a gateway (by default the running embedded default),
    /// send media both ways, hang up; prints setup time, packets each way, loss, suites.
    Call(probe_cli::CallArgs),
    /// Send and check SRTP through both relay ports of a call set up by someone else
    /// (the sipp interop run).
    MediaCheck(probe_cli::MediaCheckArgs),
    /// Write the embedded default as a starting configuration file (to stdout).
    PrintDefaultConfig(probe_cli::PrintDefaultArgs),
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check an audit log's hash chain; names the first broken line.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
    },
}

/// Load the admin section of `cfg` (defaults when absent) and check its tenants.
pub(crate) fn admin_config(cfg: &Config) -> anyhow::Result<AdminConfig> {
    let admin = match &cfg.admin_section {
        Some(v) => AdminConfig::from_toml_value(v.clone(), &cfg.base_dir)?,
        None => AdminConfig::default(),
    };
    let tenants: Vec<_> = cfg.tenants.iter().map(|t| t.id.clone()).collect();
    admin.check_tenants(&tenants)?;
    Ok(admin)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            match Config::load(&file)
                .map_err(anyhow::Error::from)
                .and_then(|cfg| {
                    admin_config(&cfg)?;
                    sbc_sip::server::check_config(&cfg)?;
                    Ok(cfg)
                }) {
                Ok(cfg) => {
                    println!("{}: OK", file.display());
                    println!("{}", cfg.summary());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: invalid: {e}", file.display());
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Ctl(args)) => ctl::run(args),
        Some(Command::Cluster(args)) => cluster_cli::run(args),
        Some(Command::Audit {
            command: AuditCommand::Verify { file },
        }) => match sbc_admin::verify_audit(&file) {
            Ok(n) => {
                println!("{}: OK, {n} lines, hash chain intact", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "{}: BROKEN at line {}: {}",
                    file.display(),
                    e.line,
                    e.reason
                );
                ExitCode::from(1)
            }
        },
        Some(Command::Call(args)) => probe_cli::call(&args, cli.demo_dir.as_deref()),
        Some(Command::MediaCheck(args)) => probe_cli::media_check(&args),
        Some(Command::PrintDefaultConfig(args)) => match probe_cli::print_default_config(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("print-default-config: {e:#}");
                ExitCode::FAILURE
            }
        },
        None => match run(
            cli.config,
            cli.log_json,
            demo::DemoOptions {
                dir: cli.demo_dir,
                any_port: cli.demo_any_port,
            },
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sbc-edge: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(
    config: Option<PathBuf>,
    log_json: bool,
    demo_opts: demo::DemoOptions,
) -> anyhow::Result<()> {
    let cfg = match &config {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display()))?,
        None => Config::embedded_default().context("embedded default config")?,
    };
    let log = logging::init(cfg.logging.level.as_deref(), log_json || cfg.logging.json);
    let mut admin_cfg = admin_config(&cfg).context("admin config")?;
    let mut cfg = cfg;
    // The embedded default runs the demo: its answering endpoint behind the demo route.
    let mut demo = match config {
        Some(_) => None,
        None => Some(demo::prepare(&mut cfg, &mut admin_cfg, &demo_opts)?),
    };
    // Installed before anything records a metric.
    let prometheus = telemetry::install(&cfg)?;
    let cfg = Arc::new(cfg);
    let media = start_media(&cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let media_control = media.as_ref().map(MediaEngine::control);
    // Recording taps: the admin plane reaches the relay through sbc-core's `TapControl`.
    let tap_control = media.as_ref().map(MediaEngine::tap_control);
    // SIPREC: recorded streams are taps of the same engine (sbc-core's `RecordingMedia`).
    let recording_media = media
        .as_ref()
        .map(|m| Arc::new(m.clone()) as Arc<dyn sbc_core::recording::RecordingMedia>);
    let media_gauges = media.clone();
    let result = runtime.block_on(async {
        // Before anything is announced (banner, READY=1): a SIGHUP or SIGTERM that
        // arrives early is then queued for the loop below, never the default action
        // (which kills the process).
        let mut signals = Signals::install();
        if let Some(d) = demo.as_mut() {
            d.start_endpoint()?;
        }
        let registry = Arc::new(CallRegistry::new());
        let drain = Arc::new(DrainState::new());
        telemetry::spawn_media_gauges(media_gauges);
        if let Some(media) = &media_control {
            spawn_counter_feed(registry.clone(), media.clone());
        }
        // `[cluster]`: tenant quotas shared with the other gateways through Redis.
        let cluster = cfg.cluster.clone().map(sbc_cluster::RedisCluster::start);
        // `[cluster.standby]`: this node's calls replicated to Redis, and with `peer` a warm
        // copy of that node's calls to take over (its quota leases move with them).
        let standby = standby::Standby::start(&cfg, cluster.clone(), media.as_ref())?;
        let audit_path = admin_cfg
            .audit_log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("sbc-edge-audit.log"));
        let audit = Arc::new(
            AuditLog::open(&audit_path)
                .map_err(|e| anyhow::anyhow!("audit log {}: {e}", audit_path.display()))?,
        );
        let hooks = Hooks {
            registry: Some(registry.clone()),
            drain: Some(drain.clone()),
            media: media_control,
            cluster: cluster
                .clone()
                .map(|c| c as Arc<dyn sbc_core::cluster::ClusterAdmission>),
            // SIPREC recording: the B2BUA forks recorded legs through the engine.
            recording: recording_media,
            // Recording start/stop/pause/resume/failure lines in the hash-chained log.
            audit: Some(audit.clone() as Arc<dyn sbc_core::audit::AuditSink>),
            // Hot standby: the B2BUA's dialog parts, and the engine restoring a claimed
            // call's media before its dialogs.
            replica: standby.as_ref().map(standby::Standby::sink),
            media_takeover: standby::media_takeover(standby.as_ref(), media.as_ref()),
        };
        let server = sbc_sip::server::start_with(cfg.clone(), hooks)
            .await
            .context("starting SIP server")?;
        if let Some(s) = &standby {
            s.connect(&server, audit.clone() as Arc<dyn sbc_core::audit::AuditSink>)?;
        }
        let admin = sbc_admin::serve(
            admin_cfg,
            AdminState {
                registry,
                usage: server.usage_source(),
                drain: drain.clone(),
                prometheus,
                tenants: cfg.tenants.iter().map(|t| t.id.clone()).collect(),
                audit,
                taps: tap_control,
                // The SIPREC recording client (sbc-sip) hands its control in here.
                // SIPREC: `/v1/calls/{id}/recordings` reads and commands the recording client.
                recordings: Some(server.recording_control()),
            },
        )
        .await
        .context("starting the admin plane")?;
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(RELOAD_QUEUE);
        admin.on_reload(reload_hook(reload_tx));
        admin.set_trunk_board(server.trunks());
        drain.set_ready(true);
        if let (Some(d), Some(sip)) = (&demo, server.sip_addrs.first()) {
            d.write_state(*sip, admin.local_addr())?;
        }
        admin.set_log_level_control(log.clone());
        if let Some(c) = &cluster {
            admin.set_cluster(c.clone());
        }
        if let Some(s) = &standby {
            admin.set_standby(s.control());
        }
        systemd::ready();
        systemd::spawn_watchdog();
        match &config {
            Some(path) => println!("sbc-edge: config {}", path.display()),
            None => println!("sbc-edge: embedded default config (demo; pass --config FILE for real use)"),
        }
        for (listener, addr) in cfg.listeners.iter().zip(&server.sip_addrs) {
            match listener.transport {
                sbc_core::config::Transport::Tls => {
                    println!("  SIP over TLS listener {:?}: sips:{addr}", listener.name)
                }
                t => println!(
                    "  SIP over {} listener {:?} (inside networks only): sip:{addr};transport={t}",
                    t.via_token(),
                    listener.name
                ),
            }
        }
        if cfg.media.enabled {
            println!(
                "  media relay: {} ports {}-{} (SDP c= {})",
                cfg.media.address, cfg.media.port_min, cfg.media.port_max, cfg.media.advertised_address
            );
        } else {
            println!("  media relay: off (SDP passes through untouched)");
        }
        if let Some(s) = &standby {
            s.announce();
        }
        println!(
            "  admin plane: http://{} (/healthz /readyz /metrics /v1/...); audit log {}",
            admin.local_addr(),
            audit_path.display()
        );
        if let Some(d) = &demo {
            d.announce();
        }
        println!("{}", cfg.summary());
        if demo.is_some() {
            println!("Try a call from a second terminal: cargo run --release -- call   (or: sbc-edge call)");
        }
        println!("SIGHUP (or `sbc-edge ctl reload`) reloads the config file and logs each changed key; SIGTERM or Ctrl-C drains (twice: stops at once).");
        let mut running = reload::Running { started: cfg.clone(), current: cfg.clone() };
        reload_until_shutdown(&mut signals, &server, &admin, &log, config.as_deref(), &mut running, &mut reload_rx).await;
        drain_then_stop(&mut signals, &server, &drain, running.current.sip.drain_deadline).await;
        admin.shutdown().await;
        server.shutdown().await;
        Ok(())
    });
    if let Some(media) = media {
        media.shutdown();
    }
    if let Some(d) = demo {
        d.shutdown();
    }
    result
}

/// How often the relay's per-leg packet counters are copied into the call registry.
const COUNTER_FEED: Duration = Duration::from_secs(1);

/// Copies the relay's per-leg packet counters into the call registry every
/// [`COUNTER_FEED`], for `GET /v1/calls` (so they are at most that stale).
fn spawn_counter_feed(registry: Arc<CallRegistry>, media: Arc<dyn MediaControl>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COUNTER_FEED);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            registry.refresh_media_counters(media.as_ref());
        }
    });
}

/// The media relay, when `[media] enabled` (the default).
fn start_media(cfg: &Config) -> anyhow::Result<Option<MediaEngine>> {
    if !cfg.media.enabled {
        return Ok(None);
    }
    let m = &cfg.media;
    sbc_media::ports::warn_if_ephemeral(m.port_min, m.port_max);
    let mut settings = MediaSettings::new(m.address, m.advertised_address, m.port_min, m.port_max);
    settings.media_timeout = m.timeout;
    settings.relatch_after = m.relatch_after;
    settings.max_streams = m.max_streams;
    settings.batch_interval = m.batch_interval;
    settings.freebind = m.freebind;
    if m.workers > 0 {
        settings.workers = m.workers;
    }
    MediaEngine::start(settings)
        .map(Some)
        .context("starting the media relay")
}

/// Refuse new calls (503) and wait for running ones to end, up to `deadline`
/// (`sip.drain_deadline_secs`) or a second signal.
async fn drain_then_stop(
    signals: &mut Signals,
    server: &ServerHandle,
    drain: &DrainState,
    deadline: Duration,
) {
    systemd::stopping();
    drain.start_drain();
    let active = server.stats().active_calls;
    tracing::info!(
        event = "drain",
        active_calls = active,
        deadline_secs = deadline.as_secs(),
        "draining: new calls refused, waiting for running calls"
    );
    let deadline = tokio::time::Instant::now() + deadline;
    let wait = async {
        while server.stats().active_calls > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = wait => {}
        _ = signals.term.next() => tracing::warn!("second signal: stopping now"),
    }
    tracing::info!(
        event = "stopped",
        active_calls = server.stats().active_calls,
        "shutting down"
    );
}

/// Reload requests from the admin API waiting at once (each waits for its answer).
const RELOAD_QUEUE: usize = 4;

/// A reload request from `POST /v1/reload`: where its outcome goes.
type ReloadReply = tokio::sync::oneshot::Sender<Result<String, String>>;

/// `POST /v1/reload` queues a request for the signal loop, which runs the same reload as
/// SIGHUP and answers with its outcome.
fn reload_hook(tx: tokio::sync::mpsc::Sender<ReloadReply>) -> sbc_admin::ReloadHook {
    Arc::new(move || {
        let tx = tx.clone();
        Box::pin(async move {
            let stopping = || "the gateway is stopping".to_string();
            let (reply, outcome) = tokio::sync::oneshot::channel();
            tx.send(reply).await.map_err(|_| stopping())?;
            outcome.await.map_err(|_| stopping())?
        })
    })
}

/// Serve SIGHUP and admin reloads until SIGTERM or Ctrl-C.
async fn reload_until_shutdown(
    signals: &mut Signals,
    server: &sbc_sip::server::ServerHandle,
    admin: &sbc_admin::AdminHandle,
    log: &logging::LogControl,
    path: Option<&std::path::Path>,
    running: &mut reload::Running,
    requests: &mut tokio::sync::mpsc::Receiver<ReloadReply>,
) {
    loop {
        tokio::select! {
            _ = signals.term.next() => return,
            _ = signals.hup.next() => {
                systemd::reloading();
                let _ = reload::reload(server, admin, log, path, running).await;
                systemd::ready();
            }
            Some(reply) = requests.recv() => {
                systemd::reloading();
                let _ = reply.send(reload::reload(server, admin, log, path, running).await);
                systemd::ready();
            }
        }
    }
}

/// The process's signal streams, created once before the gateway says it is ready.
struct Signals {
    hup: Hangup,
    term: Stop,
}

/// SIGHUP: reload.
struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

/// SIGTERM or Ctrl-C: drain, then (a second one) stop.
struct Stop(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let hup = signal(SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "SIGHUP cannot be handled: reload through the admin API only"))
                .ok();
            let term = signal(SignalKind::terminate())
                .map_err(
                    |e| tracing::warn!(error = %e, "SIGTERM cannot be handled: stop with Ctrl-C"),
                )
                .ok();
            Signals {
                hup: Hangup(hup),
                term: Stop(term),
            }
        }
        #[cfg(not(unix))]
        Signals {
            hup: Hangup(),
            term: Stop(),
        }
    }
}

impl Hangup {
    /// The next SIGHUP (never, where it cannot be handled).
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(h) = self.0.as_mut() {
            h.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

impl Stop {
    /// The next SIGTERM or Ctrl-C.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(t) = self.0.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = t.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
