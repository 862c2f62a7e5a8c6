//! The listener: TCP accept, optional TLS (with optional client certificates), HTTP/1.1 by
//! hyper (with connection upgrades, for the WebSocket tap), graceful shutdown.
//!
//! Owns: sockets and timers of the admin plane. Bounds: [`MAX_CONNECTIONS`] connections at
//! once (more are closed at accept), [`TLS_HANDSHAKE_TIMEOUT`], [`HEADER_READ_TIMEOUT`],
//! and [`SHUTDOWN_GRACE`] for in-flight requests at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::api::Shared;
use crate::config::{AdminConfig, AdminTls};
use crate::AdminError;

/// Connections served at once. The admin plane has a few scrapers and operators; this keeps
/// a misbehaving client from holding many sockets and tasks.
pub const MAX_CONNECTIONS: usize = 64;
/// A TLS handshake slower than this is dropped (a slowloris on the handshake).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose headers take longer than this is dropped.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, requests in flight get this long to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A running admin listener. Dropping it stops the listener too (as [`AdminHandle::shutdown`]
/// does, without waiting); keep it for the life of the gateway. [`AdminHandle::reload`]
/// replaces its tokens.
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// What the requests share (the reloadable tokens are in it).
    pub(crate) shared: Arc<Shared>,
    /// The settings served with; a reload that changes their listener part is not applied.
    pub(crate) started: AdminConfig,
    /// The HTTPS acceptor and the material it was built from (swapped by a reload that
    /// changes the certificate, key or client CA); `None` when serving plain HTTP.
    pub(crate) tls: Option<HotTls>,
}

/// The admin listener's HTTPS settings, replaced whole by a reload; read when a
/// connection is accepted, so a connection keeps the acceptor it was accepted with.
#[derive(Clone)]
pub(crate) struct HotTls {
    pub(crate) acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
    pub(crate) in_use: Arc<std::sync::Mutex<AdminTls>>,
}

impl std::fmt::Debug for HotTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HotTls")
    }
}

impl AdminHandle {
    /// The address bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let requests in flight finish (up to [`SHUTDOWN_GRACE`]), and wait
    /// until the listener's task has ended.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

pub(crate) fn tls_acceptor(tls: &AdminTls) -> Result<TlsAcceptor, AdminError> {
    let err = |what: &str, e: &dyn std::fmt::Display| AdminError::Tls(format!("{what}: {e}"));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err("admin.certificate", &e))?;
    // Only the parser's error kind is reported, never the key's bytes.
    let key =
        PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| err("admin.private_key", &e))?;
    let builder = ServerConfig::builder_with_protocol_versions(VERSIONS);
    let builder = match &tls.client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| err("admin.client_ca", &e))?;
                roots.add(cert).map_err(|e| err("admin.client_ca", &e))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| err("admin.client_ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| err("admin.certificate and admin.private_key", &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

pub(crate) async fn start(
    started: AdminConfig,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) -> Result<AdminHandle, AdminError> {
    let tls = match (tls, &started.tls) {
        (Some(acceptor), Some(material)) => Some(HotTls {
            acceptor: Arc::new(std::sync::RwLock::new(acceptor)),
            in_use: Arc::new(std::sync::Mutex::new(material.clone())),
        }),
        _ => None,
    };
    let address = started.address;
    let router = crate::api::router(Arc::clone(&shared));
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| AdminError::Bind { address, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { address, source })?;
    if tls.is_none() && !local_addr.ip().is_loopback() {
        warn!(address = %local_addr, "admin plane serves plain HTTP on a non-loopback address: bearer tokens cross the network in clear; configure admin.certificate");
    }
    info!(address = %local_addr, https = tls.is_some(), "admin plane listening");
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        tls.as_ref().map(|t| t.acceptor.clone()),
        router,
        rx,
    ));
    Ok(AdminHandle {
        local_addr,
        shutdown: tx,
        task,
        shared,
        started,
        tls,
    })
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<std::sync::RwLock<TlsAcceptor>>>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            // A send or a dropped handle both end the loop.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("sbc_admin_connections_refused_total", "reason" => "too_many")
                .increment(1);
            drop(stream);
            continue;
        };
        let router = router.clone();
        let tls = tls
            .as_ref()
            .map(|t| t.read().unwrap_or_else(|p| p.into_inner()).clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let result = match tls {
                None => serve_http(stream, router, stop).await,
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            metrics::counter!("sbc_admin_tls_handshake_failures_total", "reason" => "error").increment(1);
                            debug!(%peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("sbc_admin_tls_handshake_failures_total", "reason" => "timeout").increment(1);
                            debug!(%peer, "admin TLS handshake timed out");
                            return;
                        }
                    };
                    serve_http(stream, router, stop).await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: all slots back means none is left.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!("admin plane shutdown: requests still in flight after the grace period");
    }
    info!("admin plane stopped");
}

/// Serves HTTP/1.1 on one connection until it ends; on shutdown, finishes the request in
/// flight and closes. An upgraded connection (a WebSocket tap) leaves hyper and lives on
/// in its own task.
async fn serve_http<S>(
    stream: S,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = http
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        // A send or a dropped handle: both mean shut down.
        _ = shutdown.changed() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}
