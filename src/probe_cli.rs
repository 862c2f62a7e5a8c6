//! Command-line wiring of `sbc-edge call`, `sbc-edge media-check` and `sbc-edge
//! print-default-config`: arguments in, sbc-probe's reports out, exit codes. No protocol
//! logic here (that is sbc-probe).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sbc_probe::check::LegSpec;
use sbc_probe::client::{CallOptions, MAX_DURATION};
use sbc_probe::demo::{DemoDir, DEMO_SERVER_NAME};

/// `sbc-edge call`.
#[derive(clap::Args, Debug)]
pub struct CallArgs {
    /// The gateway's SIPS listener, HOST:PORT [default: the running embedded default's,
    /// read from its demo directory].
    #[arg(long, short)]
    gateway: Option<String>,
    /// CA certificate(s) (PEM) that the gateway's certificate must chain to [default: the
    /// running embedded default's demo CA].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name verified in the gateway's certificate and sent as SNI [default: the gateway's
    /// host, `localhost` for the demo].
    #[arg(long)]
    server_name: Option<String>,
    /// Client certificate (PEM), for tenants recognised by certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Called number: the Request-URI user part (routes match its prefix).
    #[arg(long, short = 'n', default_value = "15551230000")]
    number: String,
    /// Seconds of media (20 ms packets each way).
    #[arg(long, short, default_value_t = 3.0)]
    duration: f64,
    /// SRTP suite to offer; repeat for several, in order of preference.
    #[arg(long = "suite", default_values_t = ["AES_CM_128_HMAC_SHA1_80".to_string(), "AEAD_AES_256_GCM".to_string()])]
    suites: Vec<String>,
    /// Highest loss accepted in either direction, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_loss: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `sbc-edge media-check`: leg A and leg B of a call whose signalling someone else did.
#[derive(clap::Args, Debug)]
pub struct MediaCheckArgs {
    /// Leg A's relay address (from the SDP the gateway sent to leg A), IP:PORT.
    #[arg(long)]
    a_relay: SocketAddr,
    /// Leg A's own key, SUITE:BASE64 (the key leg A offered or answered).
    #[arg(long)]
    a_send: String,
    /// The gateway's key toward leg A, SUITE:BASE64 (in the SDP the gateway sent to A).
    #[arg(long)]
    a_recv: String,
    /// Leg B's relay address, IP:PORT.
    #[arg(long)]
    b_relay: SocketAddr,
    /// Leg B's own key, SUITE:BASE64.
    #[arg(long)]
    b_send: String,
    /// The gateway's key toward leg B, SUITE:BASE64.
    #[arg(long)]
    b_recv: String,
    /// Seconds of media (20 ms packets each way).
    #[arg(long, short, default_value_t = 1.0)]
    duration: f64,
    /// Highest loss accepted in either direction, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_loss: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `sbc-edge print-default-config`.
#[derive(clap::Args, Debug)]
pub struct PrintDefaultArgs {
    /// Also make a self-signed certificate and key for localhost here (sbc-edge.crt,
    /// sbc-edge.key, 0600) and point the file at them.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

fn duration(secs: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        secs.is_finite() && secs > 0.0 && secs <= MAX_DURATION.as_secs_f64(),
        "--duration must be above 0 and at most {} s",
        MAX_DURATION.as_secs()
    );
    Ok(Duration::from_secs_f64(secs))
}

fn loss(percent: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(
        percent.is_finite() && (0.0..=100.0).contains(&percent),
        "--max-loss is a percentage (0 to 100)"
    );
    Ok(percent / 100.0)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}", path.display()))
}

/// Prints the failure (JSON or text) and returns exit code 1.
fn failed(json: bool, what: &str, e: &str) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({"ok": false, "error": e}));
    } else {
        eprintln!("{what}: FAILED: {e}");
    }
    ExitCode::FAILURE
}

fn call_options(args: &CallArgs, demo_dir: Option<&Path>) -> anyhow::Result<CallOptions> {
    let dir = DemoDir {
        path: demo_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(sbc_probe::demo::default_dir),
    };
    let (gateway, default_name) = match &args.gateway {
        Some(g) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(g.as_str())
                .with_context(|| format!("--gateway {g:?} (HOST:PORT)"))?
                .next()
                .with_context(|| format!("--gateway {g:?}: no address"))?;
            let host = g
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_else(|| g.clone());
            (addr, host)
        }
        None => {
            let s = dir.read_state()?;
            (s.sip, s.server_name)
        }
    };
    let ca_path = match &args.ca {
        Some(p) => p.clone(),
        None if dir.ca_path().exists() => dir.ca_path(),
        None => anyhow::bail!(
            "no CA to verify the gateway with: pass --ca FILE (the demo CA {} does not exist)",
            dir.ca_path().display()
        ),
    };
    let ca = read(&ca_path)?;
    let client = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    let tls = sbc_probe::tls::client_config(
        &ca,
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )?;
    let suites = args
        .suites
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| anyhow::anyhow!("--suite {s:?} is not an SRTP suite we implement"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CallOptions {
        gateway,
        server_name: args
            .server_name
            .clone()
            .unwrap_or(if args.gateway.is_some() {
                default_name
            } else {
                DEMO_SERVER_NAME.to_string()
            }),
        tls,
        called: args.number.clone(),
        duration: duration(args.duration)?,
        suites,
    })
}

/// `sbc-edge call`: 0 when the call was answered and media went both ways within the loss
/// bound, 1 otherwise (2 for bad arguments).
pub fn call(args: &CallArgs, demo_dir: Option<&Path>) -> ExitCode {
    let (opts, max_loss) =
        match call_options(args, demo_dir).and_then(|o| Ok((o, loss(args.max_loss)?))) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("call: {e:#}");
                return ExitCode::from(2);
            }
        };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return failed(args.json, "call", &format!("{e:#}")),
    };
    if !args.json {
        println!(
            "call: calling {} via sips:{} (verifying {:?}), {:.1} s of SRTP media...",
            opts.called,
            opts.gateway,
            opts.server_name,
            opts.duration.as_secs_f64()
        );
    }
    let report = match rt.block_on(sbc_probe::client::place_call(&opts)) {
        Ok(r) => r,
        Err(e) => {
            let hint = match &e {
                sbc_probe::ProbeError::Refused { status: 503, .. } => {
                    " (the gateway could not reach the route's target, or admission refused the call)"
                }
                _ => "",
            };
            return failed(args.json, "call", &format!("{e}{hint}"));
        }
    };
    let verdict = report.verdict(max_loss);
    if args.json {
        let mut v = report.to_json();
        v["ok"] = verdict.is_ok().into();
        if let Err(e) = &verdict {
            v["error"] = e.clone().into();
        }
        println!("{v}");
    } else {
        println!("{report}");
    }
    match verdict {
        Ok(()) => {
            if !args.json {
                println!("call: OK");
            }
            ExitCode::SUCCESS
        }
        Err(e) if args.json => {
            let _ = e;
            ExitCode::FAILURE
        }
        Err(e) => failed(false, "call", &e),
    }
}

fn leg(relay: SocketAddr, send: &str, recv: &str) -> anyhow::Result<LegSpec> {
    Ok(LegSpec {
        relay,
        send: sbc_probe::sdes::parse_key_arg(send)?,
        recv: sbc_probe::sdes::parse_key_arg(recv)?,
    })
}

/// `sbc-edge media-check`: 0 when media went both ways within the loss bound.
pub fn media_check(args: &MediaCheckArgs) -> ExitCode {
    let parsed = (|| {
        Ok::<_, anyhow::Error>((
            leg(args.a_relay, &args.a_send, &args.a_recv).context("leg A")?,
            leg(args.b_relay, &args.b_send, &args.b_recv).context("leg B")?,
            duration(args.duration)?,
            loss(args.max_loss)?,
        ))
    })();
    let (a, b, d, max_loss) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("media-check: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime().and_then(|rt| Ok(rt.block_on(sbc_probe::check::check(&a, &b, d))?))
    {
        Ok(r) => r,
        Err(e) => return failed(args.json, "media-check", &format!("{e:#}")),
    };
    let verdict = report.verdict(max_loss);
    if args.json {
        let mut v = report.to_json();
        v["ok"] = verdict.is_ok().into();
        println!("{v}");
    } else {
        println!("media-check: {report}");
    }
    match verdict {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if args.json => {
            let _ = e;
            ExitCode::FAILURE
        }
        Err(e) => failed(false, "media-check", &e),
    }
}

/// `sbc-edge print-default-config`.
pub fn print_default_config(args: &PrintDefaultArgs) -> anyhow::Result<()> {
    let (cert, key) = match &args.cert_dir {
        None => {
            eprintln!("print-default-config: the file names sbc-edge.crt and sbc-edge.key beside it; pass --cert-dir DIR to make a self-signed pair, or use your own");
            ("sbc-edge.crt".to_string(), "sbc-edge.key".to_string())
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            let dir = dir
                .canonicalize()
                .with_context(|| format!("{}", dir.display()))?;
            let (cert_pem, key_pem) =
                sbc_core::config::self_signed(&["localhost".to_string(), "127.0.0.1".to_string()])?;
            let key_pem = zeroize::Zeroizing::new(key_pem);
            let (c, k) = (dir.join("sbc-edge.crt"), dir.join("sbc-edge.key"));
            std::fs::write(&c, cert_pem).with_context(|| format!("{}", c.display()))?;
            write_private(&k, key_pem.as_bytes())?;
            eprintln!(
                "print-default-config: made {} and {}",
                c.display(),
                k.display()
            );
            (c.display().to_string(), k.display().to_string())
        }
    };
    print!("{}", sbc_core::config::default_config_file(&cert, &key));
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("{}", path.display()))
}
