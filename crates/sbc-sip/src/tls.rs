//! TLS settings for SIP: server configs per listener, client configs per route target.
//!
//! Owns: turning PEM material from the validated config into rustls configs, and session
//! resumption on both sides ([`Resumption`] for listeners, a bounded session store per
//! route target). TLS 1.2 and 1.3 only, rustls' default cipher suites. Must not: log key
//! material.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::SipError;

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, SipError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| SipError::Tls(format!("{what}: bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(SipError::Tls(format!("{what}: no certificate in PEM")));
    }
    Ok(certs)
}

fn roots(pem: &[u8], what: &str) -> Result<RootCertStore, SipError> {
    let mut store = RootCertStore::empty();
    for cert in certs(pem, what)? {
        store
            .add(cert)
            .map_err(|e| SipError::Tls(format!("{what}: unusable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// TLS 1.2 sessions a listener remembers by session id, for clients that do not take
/// tickets: an entry is a few hundred bytes, so at most about 2 MiB per listener, and 4096
/// covers the trunks of a busy edge reconnecting within a session's life.
pub const SERVER_SESSION_CACHE: usize = 4096;

/// Servers (one per TLS name) whose session a client connection to route targets
/// remembers: rustls' default, well above the number of trunk names a gateway dials.
pub const CLIENT_SESSION_CACHE: usize = 256;

/// A listener's session resumption state, kept across certificate swaps so a client
/// resumes after one: a ticket encrypter (RFC 5077 construction, AES-256 + HMAC-SHA256;
/// its key rotates every 6 hours and a ticket lives at most 12 hours, rustls' `Ticketer`)
/// for TLS 1.3 and 1.2 tickets, and a bounded session-id cache for TLS 1.2 clients that do
/// not take tickets.
#[derive(Clone)]
pub struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    sessions: Arc<rustls::server::ServerSessionMemoryCache>,
}

impl Resumption {
    /// Fresh keys and an empty cache: sessions made before cannot resume.
    pub fn new() -> Result<Resumption, SipError> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| SipError::Tls(format!("session ticket keys: {e}")))?;
        Ok(Resumption {
            ticketer,
            sessions: rustls::server::ServerSessionMemoryCache::new(SERVER_SESSION_CACHE),
        })
    }
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resumption(<ticket keys>)")
    }
}

/// Server config for one listener. With `client_ca`, client certificates are requested and
/// verified against it (required if `require_client_cert`). No session resumption: see
/// [`server_config_with`].
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, SipError> {
    build_server_config(cert_pem, key_pem, client_ca, require_client_cert).map(Arc::new)
}

/// [`server_config`] resuming sessions with `resumption` (shared by every config a
/// listener has had since its client CA last changed).
pub fn server_config_with(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
    require_client_cert: bool,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, SipError> {
    let mut cfg = build_server_config(cert_pem, key_pem, client_ca, require_client_cert)?;
    cfg.ticketer = resumption.ticketer.clone();
    cfg.session_storage = resumption.sessions.clone();
    Ok(Arc::new(cfg))
}

fn build_server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
    require_client_cert: bool,
) -> Result<ServerConfig, SipError> {
    let chain = certs(cert_pem, "listener certificate")?;
    // The key's bytes never reach an error message: only the parser's error kind does.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| SipError::Tls(format!("listener private key: unusable PEM: {e}")))?;
    let builder = ServerConfig::builder_with_protocol_versions(VERSIONS);
    let builder = match client_ca {
        Some(ca) => {
            let store = Arc::new(roots(ca, "client CA")?);
            let verifier = WebPkiClientVerifier::builder(store);
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| SipError::Tls(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            SipError::Tls("the certificate does not match the private key".to_string())
        }
        e => SipError::Tls(format!("listener certificate and key: {e}")),
    })?;
    Ok(cfg)
}

/// Client config for a route target: trusts `ca_pem` if given, otherwise the Mozilla roots
/// shipped in `webpki-roots`. Server names are always verified.
pub fn client_config(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, SipError> {
    let store = match ca_pem {
        Some(pem) => roots(pem, "route target CA")?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let mut cfg = ClientConfig::builder_with_protocol_versions(VERSIONS)
        .with_root_certificates(store)
        .with_no_client_auth();
    // Reconnecting to a trunk resumes (a TLS 1.3 ticket or a TLS 1.2 session) instead of
    // a full handshake; the store is per connector, so per route target.
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(CLIENT_SESSION_CACHE);
    Ok(Arc::new(cfg))
}

/// The `kind` label of `sbc_tls_handshakes_total`: `resumed` (a session ticket or id
/// was accepted: no certificate sent or verified, no key exchange signature) or `full`.
pub fn handshake_kind(kind: Option<rustls::HandshakeKind>) -> &'static str {
    match kind {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    }
}

/// The TLS name to verify for a target host (DNS name or IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, SipError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| SipError::Tls(format!("route target name {host:?}: {e}")))
}
