//! Wiring of the embedded default's demo (no protocol logic: that is in sbc-probe): the
//! listener's certificate issued by a demo CA made at start, the demo answering endpoint
//! behind the demo route (which trusts that CA), the operator token, and the demo
//! directory `sbc-edge call` reads.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use sbc_admin::{AdminConfig, Role, TokenEntry};
use sbc_core::config::{Config, PrivateKeyPem};
use sbc_probe::demo::{DemoDir, DemoPki, DemoState, DEMO_SERVER_NAME};
use sbc_probe::endpoint::{EndpointConfig, EndpointHandle};

/// Where the demo endpoint listens by default: the embedded default's route target.
const ENDPOINT_PORT: u16 = 5062;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Demo directory (default: [`sbc_probe::demo::default_dir`]).
    pub dir: Option<PathBuf>,
    /// Every demo listener on a free port (SIP, endpoint, admin).
    pub any_port: bool,
}

/// The demo, prepared before the runtime starts.
#[derive(Debug)]
pub struct Demo {
    pub dir: DemoDir,
    endpoint_listener: Option<std::net::TcpListener>,
    endpoint: Option<EndpointHandle>,
    pub endpoint_addr: SocketAddr,
    endpoint_cfg: EndpointConfig,
}

/// Rewrites the embedded default `cfg` and `admin` for the demo: certificates from a demo
/// CA, the route to the answering endpoint (bound here), an operator token.
pub fn prepare(
    cfg: &mut Config,
    admin: &mut AdminConfig,
    opts: &DemoOptions,
) -> anyhow::Result<Demo> {
    let dir_path = opts
        .dir
        .clone()
        .unwrap_or_else(sbc_probe::demo::default_dir);
    let dir = DemoDir::create(&dir_path).context("demo directory")?;
    let pki = DemoPki::new().context("demo certificates")?;
    dir.write_ca(&pki.ca_pem).context("demo CA file")?;

    let listener = cfg
        .listeners
        .first_mut()
        .context("the embedded default has a listener")?;
    listener.certificate_pem = pki.gateway.cert_pem.clone().into_bytes();
    listener.private_key = PrivateKeyPem::new(zeroize::Zeroizing::new(
        pki.gateway.key_pem.as_bytes().to_vec(),
    ));
    if opts.any_port {
        listener.address.set_port(0);
        admin.address.set_port(0);
    }

    let lo = Ipv4Addr::LOCALHOST;
    let port = if opts.any_port { 0 } else { ENDPOINT_PORT };
    // The route is written from the bound address, so a taken 5062 only moves it.
    let endpoint_listener = std::net::TcpListener::bind((lo, port))
        .or_else(|_| std::net::TcpListener::bind((lo, 0)))
        .context("demo answering endpoint: bind")?;
    let endpoint_addr = endpoint_listener
        .local_addr()
        .context("demo endpoint address")?;
    let route = cfg
        .tenants
        .first_mut()
        .and_then(|t| t.routes.first_mut())
        .context("the embedded default has a demo route")?;
    let uri = sbc_core::config::parse_target(&format!("sips:{endpoint_addr}"))
        .map_err(anyhow::Error::msg)?;
    route.targets = vec![sbc_core::config::RouteTarget {
        uri,
        priority: 0,
        weight: 1,
    }];
    route.server_name = Some(DEMO_SERVER_NAME.to_string());
    route.ca_pem = Some(pki.ca_pem.clone().into_bytes());

    if admin.address.ip().is_loopback() {
        let sha256 = dir.write_token().context("operator token")?;
        admin.tokens.push(TokenEntry {
            id: "demo-operator".to_string(),
            sha256,
            role: Role::Operator,
        });
    }
    let endpoint_cfg = EndpointConfig {
        tls: sbc_probe::tls::server_config(
            pki.endpoint.cert_pem.as_bytes(),
            pki.endpoint.key_pem.as_bytes(),
        )
        .context("demo endpoint TLS")?,
        media_ip: endpoint_addr.ip(),
    };
    Ok(Demo {
        dir,
        endpoint_listener: Some(endpoint_listener),
        endpoint: None,
        endpoint_addr,
        endpoint_cfg,
    })
}

impl Demo {
    /// Starts the answering endpoint (inside the runtime).
    pub fn start_endpoint(&mut self) -> anyhow::Result<()> {
        let l = self
            .endpoint_listener
            .take()
            .context("the demo endpoint starts once")?;
        let h = sbc_probe::endpoint::serve(l, self.endpoint_cfg.clone())
            .context("demo answering endpoint")?;
        self.endpoint = Some(h);
        Ok(())
    }

    /// Writes the state file `call` reads, once the gateway listens (before the banner,
    /// so whoever reads the banner finds the file).
    pub fn write_state(&self, sip: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
        self.dir
            .write_state(&DemoState {
                pid: std::process::id(),
                sip,
                admin: Some(admin),
                server_name: DEMO_SERVER_NAME.to_string(),
            })
            .context("demo state file")
    }

    /// Prints where the demo's parts are (part of the start banner).
    pub fn announce(&self) {
        println!(
            "  demo answering endpoint (demo only: answers every call, echoes its SRTP): sips:{}, behind the demo route",
            self.endpoint_addr
        );
        println!(
            "  demo files: {} (ca.pem: the demo CA; state: read by `sbc-edge call`)",
            self.dir.path.display()
        );
        if self.dir.token_path().exists() {
            println!(
                "  operator token (admin API, loopback only): {}",
                self.dir.token_path().display()
            );
        }
    }

    /// Stops the endpoint and removes the state file and token.
    pub fn shutdown(mut self) {
        if let Some(h) = self.endpoint.take() {
            h.shutdown();
        }
        self.dir.remove_runtime_files();
    }
}
