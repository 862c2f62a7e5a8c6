//! TLS settings for SIP: server configs per listener, client configs per route target.
//!
//! Owns: turning PEM material from the validated config into rustls configs. TLS 1.2 and
//! 1.3 only, rustls' default cipher suites. Must not: log key material.

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

/// Server config for one listener. With `client_ca`, client certificates are requested and
/// verified against it (required if `require_client_cert`).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, SipError> {
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
    Ok(Arc::new(cfg))
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
    let cfg = ClientConfig::builder_with_protocol_versions(VERSIONS)
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The TLS name to verify for a target host (DNS name or IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, SipError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| SipError::Tls(format!("route target name {host:?}: {e}")))
}
